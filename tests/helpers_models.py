"""Tiny Stable-Diffusion-shaped models on disk, for tests that load checkpoints through the real code.

* ``tiny_components("sd1" | "sd2", seed)``: UNet, VAE, text encoder and scheduler config with random weights
  (a few MB). "sd1" has SD 1.x's shape (CLIP text encoder with quick GELU, conv attention projections,
  epsilon); "sd2" SD 2.x's (OpenCLIP-style GELU text encoder of another width, linear projections, per-level
  head sizes, v-prediction).
* ``save_diffusers_folder``: a diffusers folder with weights (``save_pretrained``), like a downloaded model.
* ``save_config_folder``: the same folder without weights - what ``load_model(..., config_dir=...)`` needs to
  load a tiny single file (the real families' folders describe full-size models).
* ``save_single_file``: the original single-file layout, as ``.safetensors`` or a torch-saved ``.ckpt``.
"""
import json
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

from trainer.models.checkpoint_convert import diffusers_to_original
from trainer.models.tokenizers import load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"

SCHEDULE = {
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}


def tiny_components(kind: str = "sd1", seed: int = 0) -> dict:
    """Random tiny models shaped like SD 1.x ("sd1") or SD 2.x v-prediction ("sd2")."""
    sd2 = kind == "sd2"
    width = 48 if sd2 else 32
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=width, attention_head_dim=(4, 8) if sd2 else 8, norm_num_groups=32,
        use_linear_projection=sd2,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
        block_out_channels=(32, 32, 32, 32), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, hidden_act="gelu" if sd2 else "quick_gelu",
        bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=width,
    ))
    for module in (unet, vae, text_encoder):
        module.eval()
    scheduler = {"_class_name": "DDIMScheduler", **SCHEDULE,
                 "prediction_type": "v_prediction" if sd2 else "epsilon"}
    return {"unet": unet, "vae": vae, "text_encoder": text_encoder, "scheduler_config": scheduler, "kind": kind}


def _write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")


def save_config_folder(components: dict, dest: Path) -> Path:
    """A config-only diffusers folder (no weights) describing the tiny model."""
    dest = Path(dest)
    components["unet"].save_config(dest / "unet")
    components["vae"].save_config(dest / "vae")
    components["text_encoder"].config.save_pretrained(dest / "text_encoder")
    _write_json(dest / "scheduler" / "scheduler_config.json", components["scheduler_config"])
    _write_json(dest / "model_index.json", {
        "_class_name": "StableDiffusionPipeline",
        "scheduler": ["diffusers", components["scheduler_config"]["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
    })
    return dest


def save_diffusers_folder(components: dict, dest: Path) -> Path:
    """A diffusers folder with weights and tokenizer, as `save_pretrained` writes it."""
    dest = save_config_folder(components, dest)
    components["unet"].save_pretrained(dest / "unet")
    components["vae"].save_pretrained(dest / "vae")
    components["text_encoder"].save_pretrained(dest / "text_encoder")
    tokenizer_dir = ASSETS / ("openclip_tokenizer" if components["kind"] == "sd2" else "clip_tokenizer")
    load_tokenizer(tokenizer_dir).save_pretrained(dest / "tokenizer")
    return dest


def save_single_file(components: dict, path: Path) -> Path:
    """The model as one original-layout file: `.safetensors`, or a `.ckpt` holding {"state_dict": ...}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in diffusers_to_original(
        components["unet"], components["vae"], components["text_encoder"]).items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state, "global_step": 1}, path)
    return path


def assert_same_weights(source: torch.nn.Module, loaded: torch.nn.Module) -> None:
    """Every parameter of `source` is in `loaded` with exactly the same values."""
    expected = {k.removeprefix("text_model."): v for k, v in source.state_dict().items()}
    actual = {k.removeprefix("text_model."): v for k, v in loaded.state_dict().items()}
    expected.pop("embeddings.position_ids", None)
    actual.pop("embeddings.position_ids", None)
    assert expected.keys() == actual.keys()
    for key, value in expected.items():
        assert torch.equal(value, actual[key].to(value.device)), key
