"""SDXL checkpoints: recognised, loaded offline from a diffusers folder and from one original-layout file (made by
the app's converter), refiner and unknown layouts refused with a sentence; the shipped SDXL configs are SDXL base."""
import json
import shutil
import socket

import pytest
import torch
from safetensors.torch import save_file

from helpers_models import assert_same_weights
from helpers_sdxl import sdxl_files, sdxl_model  # noqa: F401 - fixtures
from trainer.models.checkpoint_convert import sdxl_to_original, text_encoder_to_openclip
from common.errors import UserError
from trainer.models.loading import CONFIGS_DIR, list_checkpoints, load_model
from trainer.workspace import Workspace

PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def assert_sdxl_model(model, components):
    assert model.is_sdxl and model.family == "SDXL"
    assert model.text_width == 32 + 48 and model.clip_l_width == 32
    assert model.tokenizer.pad_token == "<|endoftext|>" and model.tokenizer_2.pad_token == "!"
    assert model.prediction_type == "epsilon" and model.vae.config.scaling_factor == 0.13025
    for key in PARTS:
        assert_same_weights(components[key], getattr(model, key))
        module = getattr(model, key)
        assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_sdxl_diffusers_folder_loads_as_sdxl(sdxl_files, sdxl_model):
    assert "xl" in list_checkpoints(sdxl_files["ckpt_dir"]) and "xl.safetensors" in list_checkpoints(sdxl_files["ckpt_dir"])
    assert_sdxl_model(sdxl_model, sdxl_files["components"])
    assert sdxl_model.name == "xl" and len(sdxl_model.checkpoint_hash) == 10


def test_sdxl_single_file_loads_with_the_same_weights(sdxl_files):
    model = load_model("xl.safetensors", sdxl_files["ckpt_dir"], config_dir=sdxl_files["config"])
    assert_sdxl_model(model, sdxl_files["components"])


def test_sdxl_single_file_is_recognised_without_a_config(sdxl_files):
    # Without config_dir the shipped full-size SDXL config is used: the tiny file is recognised as SDXL and
    # refused because its shapes do not fit it.
    with pytest.raises(UserError, match=r"^Checkpoint 'xl.safetensors' does not match its SDXL configuration"):
        load_model("xl.safetensors", sdxl_files["ckpt_dir"])


def test_caption_says_sdxl(sdxl_model):
    from webui.model_bar import model_caption

    caption = model_caption(Workspace(model=sdxl_model))
    assert "**xl**" in caption and "SDXL" in caption and "text width 80" in caption


def test_refiner_folder_is_refused(sdxl_files, tmp_path):
    refiner = tmp_path / "refiner"
    shutil.copytree(sdxl_files["ckpt_dir"] / "xl", refiner)
    shutil.rmtree(refiner / "text_encoder")
    shutil.rmtree(refiner / "tokenizer")
    index = json.loads((refiner / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLImg2ImgPipeline", text_encoder=[None, None], tokenizer=[None, None])
    (refiner / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(UserError, match=r"^'refiner' is an SDXL refiner.*choose an SDXL base model\.$"):
        load_model("refiner", tmp_path)


def test_refiner_and_unknown_single_files_are_refused(sdxl_files, tmp_path):
    c = sdxl_files["components"]
    full = sdxl_to_original(c["unet"], c["vae"], c["text_encoder"], c["text_encoder_2"])
    unet_and_vae = {k: v for k, v in full.items() if not k.startswith("conditioner.")}
    # The refiner: only the OpenCLIP encoder, in the first slot.
    refiner = {**unet_and_vae, **text_encoder_to_openclip(c["text_encoder_2"], "conditioner.embedders.0.model.")}
    save_file({k: v.contiguous() for k, v in refiner.items()}, str(tmp_path / "refiner.safetensors"))
    with pytest.raises(UserError, match=r"^Checkpoint 'refiner.safetensors' is an SDXL refiner"):
        load_model("refiner.safetensors", tmp_path, config_dir=sdxl_files["config"])
    # Only CLIP-L: no known layout.
    odd = {k: v for k, v in full.items() if not k.startswith("conditioner.embedders.1.")}
    save_file({k: v.contiguous() for k, v in odd.items()}, str(tmp_path / "odd.safetensors"))
    with pytest.raises(UserError, match=r"^Checkpoint 'odd.safetensors' has an unknown SDXL-like layout"):
        load_model("odd.safetensors", tmp_path, config_dir=sdxl_files["config"])
    # An SDXL file with a config folder of another family.
    with pytest.raises(UserError, match="describes another family"):
        load_model(str(sdxl_files["ckpt_dir"] / "xl.safetensors"), tmp_path, config_dir=CONFIGS_DIR / "sd1")


def test_shipped_sdxl_config_is_sdxl_base():
    """Built on the meta device: exactly the published SDXL base 1.0 parameter counts, and the converter gives
    the key names and shapes of the original sd_xl_base_1.0.safetensors."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    folder = CONFIGS_DIR / "sdxl"
    with init_empty_weights():
        unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(str(folder), subfolder="unet"))
        vae = AutoencoderKL.from_config(AutoencoderKL.load_config(str(folder), subfolder="vae"))
        clip_l = CLIPTextModel(CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder"))
        clip_g = CLIPTextModelWithProjection(CLIPTextConfig.from_pretrained(str(folder), subfolder="text_encoder_2"))
    counts = [sum(p.numel() for p in m.parameters()) for m in (unet, vae, clip_l, clip_g)]
    assert counts == [2_567_463_684, 83_653_863, 123_060_480, 694_659_840]
    assert vae.config.force_upcast and vae.config.scaling_factor == 0.13025
    state = sdxl_to_original(unet, vae, clip_l, clip_g)
    expected = {
        "model.diffusion_model.label_emb.0.0.weight": (1280, 2816),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.9.attn2.to_k.weight": (1280, 2048),
        "model.diffusion_model.input_blocks.6.0.op.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.2.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.0.skip_connection.weight": (320, 640, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "conditioner.embedders.0.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "conditioner.embedders.1.model.transformer.resblocks.31.attn.in_proj_weight": (3840, 1280),
        "conditioner.embedders.1.model.text_projection": (1280, 1280),
        "conditioner.embedders.1.model.positional_embedding": (77, 1280),
    }
    assert {k: tuple(state[k].shape) for k in expected} == expected
    assert not any(k.startswith("model.diffusion_model.output_blocks.9") for k in state)
    assert json.loads((folder / "model_index.json").read_text())["text_encoder_2"][1] == "CLIPTextModelWithProjection"


def test_single_file_projection_is_openclips_layout(sdxl_files):
    """OpenCLIP multiplies by text_projection (x @ P): P is the transpose of the diffusers linear weight."""
    encoder = sdxl_files["components"]["text_encoder_2"]
    state = text_encoder_to_openclip(encoder, "conditioner.embedders.1.model.")
    projection = state["conditioner.embedders.1.model.text_projection"]
    assert projection.shape == (48, 40)
    x = torch.randn(3, 48)
    assert torch.allclose(x @ projection, encoder.text_projection(x), atol=1e-6)


def test_single_file_whose_encoders_have_the_same_width(tmp_path):
    """The encoders are told apart by their place in the file, not their widths (diffusers' helper would load
    CLIP-L's weights into both when the widths match)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from helpers_sdxl import save_sdxl_config_folder, save_sdxl_single_file, tiny_sdxl_components

    parts = tiny_sdxl_components(seed=8)
    parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu", projection_dim=32)).eval()
    parts["unet"] = UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(32, 64), down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=64, addition_embed_type="text_time", addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=6 * 8 + 32).eval()
    save_sdxl_single_file(parts, tmp_path / "same.safetensors")
    model = load_model("same.safetensors", tmp_path, config_dir=save_sdxl_config_folder(parts, tmp_path / "config"))
    assert model.text_width == 64 and model.clip_l_width == 32
    for key in PARTS:
        assert_same_weights(parts[key], getattr(model, key))


def test_other_diffusers_pipelines_are_refused_with_a_sentence(tmp_path):
    flux = tmp_path / "flux"
    (flux / "transformer").mkdir(parents=True)
    (flux / "model_index.json").write_text(json.dumps({"_class_name": "FluxPipeline",
                                                       "transformer": ["diffusers", "FluxTransformer2DModel"]}))
    with pytest.raises(UserError, match=r"^'flux' is not a Stable Diffusion 1.x/2.x or SDXL model "
                                        r"\(FluxPipeline with no UNet\)\.$"):
        load_model("flux", tmp_path)
    kandinsky = tmp_path / "kandinsky"
    (kandinsky / "unet").mkdir(parents=True)
    (kandinsky / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    (kandinsky / "unet" / "config.json").write_text(json.dumps({"addition_embed_type": "image"}))
    with pytest.raises(UserError, match=r"KandinskyV22Pipeline with a UNet with the added embedding 'image'"):
        load_model("kandinsky", tmp_path)
