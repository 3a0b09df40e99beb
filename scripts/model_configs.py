"""Config-only diffusers folders for the model families the app loads from single files.

A single original-layout checkpoint (`v1-5-pruned.safetensors`, `v2-1_768-ema-pruned.ckpt`) carries weights
but no architecture. diffusers' single-file loader takes the architecture from a diffusers-format folder
(`config=folder`); with one on disk it needs no network. These are those folders, without weights:

* ``sd1``   - Stable Diffusion 1.x (1.5): CLIP ViT-L/14 text encoder (768 wide, 12 layers), epsilon.
* ``sd2``   - Stable Diffusion 2.x 512 px (2.1-base): OpenCLIP ViT-H text encoder run as a 23-layer
  ``CLIPTextModel`` (the original model's penultimate layer is what SD 2 uses), linear attention
  projections, epsilon prediction.
* ``sd2-v`` - Stable Diffusion 2.x 768 px (2.1): as ``sd2`` with v-prediction.
* ``sdxl``  - Stable Diffusion XL base 1.0 (1024 px): CLIP ViT-L/14 (``text_encoder``) and OpenCLIP ViT-bigG/14
  with its projection (``text_encoder_2``, a ``CLIPTextModelWithProjection``); a three-level UNet with
  1/2/10 transformer layers, 2048-wide cross-attention (both encoders' states side by side) and the
  "text_time" added embedding (pooled text + six size/crop numbers); the fp16-unsafe VAE (scale 0.13025).

The values are those of the published diffusers repositories (stable-diffusion-v1-5,
stabilityai/stable-diffusion-2-1-base, stabilityai/stable-diffusion-2-1,
stabilityai/stable-diffusion-xl-base-1.0). The tokenizers are not repeated here: the app ships them in
trainer/assets/clip_tokenizer and openclip_tokenizer (SDXL's ``tokenizer_2`` is the latter: the same BPE,
padding with "!") and passes them in.

Called by scripts/make_model_assets.py; ``python scripts/model_configs.py DEST`` also works alone.
"""
import json
from pathlib import Path

DIFFUSERS_VERSION = "0.42.0"

SD_SCHEDULE = {  # the noise schedule every SD 1.x / 2.x model was trained with
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
}


def unet_config(text_width: int, sample_size: int, sd2: bool) -> dict:
    """UNet2DConditionModel: 320/640/1280/1280 channels, attention in the first three levels and the middle."""
    config = {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "attention_head_dim": [5, 10, 20, 20] if sd2 else 8,
        "block_out_channels": [320, 640, 1280, 1280],
        "center_input_sample": False,
        "cross_attention_dim": text_width,
        "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
        "downsample_padding": 1,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        "sample_size": sample_size,
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    }
    if sd2:
        config.update({
            "dual_cross_attention": False,
            "use_linear_projection": True,
            # The 768-v model was published with fp32 attention; the base model without (irrelevant with SDPA).
            "upcast_attention": sample_size == 96,
        })
    return config


def vae_config(sample_size: int) -> dict:
    """AutoencoderKL: 8x downscale, 4 latent channels, the same for SD 1.x and 2.x."""
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "block_out_channels": [128, 256, 512, 512],
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "in_channels": 3,
        "latent_channels": 4,
        "layers_per_block": 2,
        "norm_num_groups": 32,
        "out_channels": 3,
        "sample_size": sample_size,
        "scaling_factor": 0.18215,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
    }


def text_encoder_config(sd2: bool) -> dict:
    """CLIPTextModel: OpenAI CLIP ViT-L/14 text tower (SD 1.x) or OpenCLIP ViT-H/14 minus its last layer (SD 2.x)."""
    return {
        "architectures": ["CLIPTextModel"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu" if sd2 else "quick_gelu",
        "hidden_size": 1024 if sd2 else 768,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4096 if sd2 else 3072,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": 16 if sd2 else 12,
        "num_hidden_layers": 23 if sd2 else 12,
        "pad_token_id": 1,
        "projection_dim": 512 if sd2 else 768,
        "vocab_size": 49408,
    }


def sdxl_unet_config() -> dict:
    """SDXL base UNet: 320/640/1280 channels, no attention in the first level, 1/2/10 transformer layers."""
    return {
        "_class_name": "UNet2DConditionModel",
        "_diffusers_version": DIFFUSERS_VERSION,
        "act_fn": "silu",
        "addition_embed_type": "text_time",
        "addition_embed_type_num_heads": 64,
        "addition_time_embed_dim": 256,
        "attention_head_dim": [5, 10, 20],
        "block_out_channels": [320, 640, 1280],
        "center_input_sample": False,
        "cross_attention_dim": 2048,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "downsample_padding": 1,
        "dual_cross_attention": False,
        "flip_sin_to_cos": True,
        "freq_shift": 0,
        "in_channels": 4,
        "layers_per_block": 2,
        "mid_block_scale_factor": 1,
        "mid_block_type": "UNetMidBlock2DCrossAttn",
        "norm_eps": 1e-05,
        "norm_num_groups": 32,
        "out_channels": 4,
        # 6 size/crop numbers x 256 (their sinusoidal embedding) + the 1280-wide pooled text projection
        "projection_class_embeddings_input_dim": 2816,
        "resnet_time_scale_shift": "default",
        "sample_size": 128,
        "time_embedding_type": "positional",
        "transformer_layers_per_block": [1, 2, 10],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "use_linear_projection": True,
    }


def sdxl_vae_config() -> dict:
    """SDXL's VAE: the SD layout, its own latent scale, and overflowing in fp16 (so run in fp32)."""
    return {**vae_config(1024), "scaling_factor": 0.13025, "force_upcast": True}


def sdxl_text_encoder_2_config() -> dict:
    """CLIPTextModelWithProjection: OpenCLIP ViT-bigG/14's text tower (1280 wide, 32 layers) and projection."""
    return {
        "architectures": ["CLIPTextModelWithProjection"],
        "model_type": "clip_text_model",
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": "gelu",
        "hidden_size": 1280,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 5120,
        "layer_norm_eps": 1e-05,
        "max_position_embeddings": 77,
        "num_attention_heads": 20,
        "num_hidden_layers": 32,
        "pad_token_id": 1,
        "projection_dim": 1280,
        "vocab_size": 49408,
    }


def sdxl_scheduler_config() -> dict:
    return {
        "_class_name": "EulerDiscreteScheduler",
        "_diffusers_version": DIFFUSERS_VERSION,
        **SD_SCHEDULE,
        "interpolation_type": "linear",
        "prediction_type": "epsilon",
        "sample_max_value": 1.0,
        "skip_prk_steps": True,
        "timestep_spacing": "leading",
        "use_karras_sigmas": False,
    }


def sdxl_model_index() -> dict:
    return {
        "_class_name": "StableDiffusionXLPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "force_zeros_for_empty_prompt": True,
        "image_encoder": [None, None],
        "scheduler": ["diffusers", "EulerDiscreteScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def scheduler_config(class_name: str, prediction_type: str) -> dict:
    return {
        "_class_name": class_name,
        "_diffusers_version": DIFFUSERS_VERSION,
        **SD_SCHEDULE,
        "skip_prk_steps": True,
        "prediction_type": prediction_type,
    }


def model_index(scheduler_class: str) -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": DIFFUSERS_VERSION,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler_class],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }


def family_configs() -> dict:
    """{family: {relative file path: json data}} for every family folder."""
    families = {
        # name: (text width, UNet sample size, VAE sample size, scheduler class, prediction type)
        "sd1": (768, 64, 512, "PNDMScheduler", "epsilon"),
        "sd2": (1024, 64, 512, "PNDMScheduler", "epsilon"),
        "sd2-v": (1024, 96, 768, "DDIMScheduler", "v_prediction"),
    }
    out = {}
    for name, (width, unet_size, vae_size, scheduler_class, prediction) in families.items():
        sd2 = width == 1024
        out[name] = {
            "model_index.json": model_index(scheduler_class),
            "unet/config.json": unet_config(width, unet_size, sd2),
            "vae/config.json": vae_config(vae_size),
            "text_encoder/config.json": text_encoder_config(sd2),
            "scheduler/scheduler_config.json": scheduler_config(scheduler_class, prediction),
        }
    out["sdxl"] = {
        "model_index.json": sdxl_model_index(),
        "unet/config.json": sdxl_unet_config(),
        "vae/config.json": sdxl_vae_config(),
        "text_encoder/config.json": {**text_encoder_config(sd2=False), "projection_dim": 768},
        "text_encoder_2/config.json": sdxl_text_encoder_2_config(),
        "scheduler/scheduler_config.json": sdxl_scheduler_config(),
    }
    return out


def write_config_folders(dest: Path) -> None:
    """Write dest/<family>/... for every family (overwriting what is there)."""
    dest = Path(dest)
    for family, files in family_configs().items():
        for relative, data in files.items():
            path = dest / family / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", nargs="?", type=Path, default=Path("configs"),
                        help="folder to write <family>/... into (default: ./configs)")
    write_config_folders(parser.parse_args().dest)
