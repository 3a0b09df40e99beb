"""A tiny SDXL-shaped model, built from config, saved the ways users have SDXL checkpoints.

``tiny_sdxl_components(seed)``: CLIP-L-like ``text_encoder`` (32 wide, quick GELU), OpenCLIP-bigG-like
``text_encoder_2`` with a projection (48 wide, GELU, projecting to 40: not square, so a transposed projection
would show), a two-level UNet with SDXL's structure (no attention in the first level, linear projections,
80-wide cross-attention = 32 + 48, the "text_time" added embedding), and a VAE with SDXL's latent scale. A few MB;
a 64 px image is an 8x8 latent.
"""
import json
from pathlib import Path

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from trainer.models.checkpoint_convert import sdxl_to_original
from trainer.models.tokenizers import load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"
CLIP_L, CLIP_G, PROJECTION, TIME_DIM = 32, 48, 40, 8

SCHEDULER = {
    "_class_name": "EulerDiscreteScheduler", "num_train_timesteps": 1000, "beta_start": 0.00085,
    "beta_end": 0.012, "beta_schedule": "scaled_linear", "clip_sample": False, "set_alpha_to_one": False,
    "steps_offset": 1, "prediction_type": "epsilon", "timestep_spacing": "leading",
}


def tiny_sdxl_components(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 1), attention_head_dim=(2, 4), use_linear_projection=True,
        cross_attention_dim=CLIP_L + CLIP_G, norm_num_groups=32, addition_embed_type="text_time",
        addition_time_embed_dim=TIME_DIM, projection_class_embeddings_input_dim=6 * TIME_DIM + PROJECTION,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64, scaling_factor=0.13025, force_upcast=True,
    )
    common = dict(vocab_size=49408, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                  max_position_embeddings=77, bos_token_id=0, eos_token_id=2, pad_token_id=1)
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=CLIP_L, hidden_act="quick_gelu",
                                                projection_dim=CLIP_L, **common))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=CLIP_G, hidden_act="gelu",
                                                                projection_dim=PROJECTION, **common))
    for module in (unet, vae, text_encoder, text_encoder_2):
        module.eval()
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "text_encoder_2": text_encoder_2,
            "scheduler_config": dict(SCHEDULER)}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def model_index(refiner: bool = False) -> dict:
    return {
        "_class_name": "StableDiffusionXLImg2ImgPipeline" if refiner else "StableDiffusionXLPipeline",
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": [None, None] if refiner else ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": [None, None] if refiner else ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    }


def save_sdxl_config_folder(components: dict, dest: Path) -> Path:
    """A config-only diffusers folder (no weights) describing the tiny SDXL model (for single files)."""
    dest = Path(dest)
    components["unet"].save_config(dest / "unet")
    components["vae"].save_config(dest / "vae")
    components["text_encoder"].config.save_pretrained(dest / "text_encoder")
    components["text_encoder_2"].config.save_pretrained(dest / "text_encoder_2")
    _write_json(dest / "scheduler" / "scheduler_config.json", components["scheduler_config"])
    _write_json(dest / "model_index.json", model_index())
    return dest


def save_sdxl_diffusers_folder(components: dict, dest: Path) -> Path:
    """A diffusers SDXL folder with weights and both tokenizers, as `save_pretrained` writes it."""
    dest = save_sdxl_config_folder(components, dest)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        components[key].save_pretrained(dest / key)
    load_tokenizer(ASSETS / "clip_tokenizer").save_pretrained(dest / "tokenizer")
    load_tokenizer(ASSETS / "openclip_tokenizer").save_pretrained(dest / "tokenizer_2")
    return dest


def save_sdxl_single_file(components: dict, path: Path) -> Path:
    """The model as one original-layout SDXL `.safetensors` (through the app's converter)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = sdxl_to_original(components["unet"], components["vae"], components["text_encoder"],
                             components["text_encoder_2"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


# Fixtures (import them into a test module: `from helpers_sdxl import sdxl_files, sdxl_model`).

@pytest.fixture(scope="session")
def sdxl_files(tmp_path_factory):
    """The tiny SDXL model saved as a diffusers folder (ckpt/xl), as one original-layout file (ckpt/xl.safetensors)
    and the config-only folder that file needs (config/)."""
    root = tmp_path_factory.mktemp("sdxl")
    components = tiny_sdxl_components(seed=5)
    save_sdxl_diffusers_folder(components, root / "ckpt" / "xl")
    save_sdxl_single_file(components, root / "ckpt" / "xl.safetensors")
    save_sdxl_config_folder(components, root / "config")
    return {"root": root, "ckpt_dir": root / "ckpt", "config": root / "config", "components": components}


@pytest.fixture(scope="session")
def sdxl_model(sdxl_files):
    """The tiny SDXL model loaded from its diffusers folder through the user's path (shared: read only)."""
    from trainer.models.loading import load_model

    return load_model("xl", sdxl_files["ckpt_dir"], "cpu")
