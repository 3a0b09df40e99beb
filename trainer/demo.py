"""The embedded demo model: a tiny Stable-Diffusion-shaped model built from config, no download.

Same shapes of data as SD 1.x (8x VAE downscale, 4 latent channels, 77-token CLIP text encoder with the real
CLIP vocabulary), but a few million random weights, so every feature works on a fresh CPU-only machine.
Self-attention only runs at the coarsest UNet level: at 512 px (64x64 latents) a training step takes well
under 0.2 s on two CPU cores. Weights are deterministic from the seed.
"""
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ASSETS = Path(__file__).resolve().parent / "assets"
TOKENIZER_DIR = ASSETS / "clip_tokenizer"
TEXT_WIDTH = 32

# The noise schedule of SD 1.x, so that the training loop sees the same timesteps and SNRs.
SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def load_clip_tokenizer(folder: Path = TOKENIZER_DIR) -> CLIPTokenizer:
    # transformers 5: build from the folder (vocab_file= silently yields a 3-token vocabulary).
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77)


def build_demo_components(seed: int = 0) -> dict:
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=37, num_attention_heads=4,
            num_hidden_layers=2, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=TEXT_WIDTH,
        ))
        # A trained CLIP's final LayerNorm has a bias, so its outputs have a clearly non-zero mean; the
        # reference's emphasis (rescale to the original mean) relies on that. Give the demo one too.
        with torch.no_grad():
            text_encoder.final_layer_norm.bias.normal_(0.0, 0.5)
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 32, 64),
            down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
        )
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
            block_out_channels=(32, 32, 32, 32),
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=512, scaling_factor=0.18215,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return {
        "tokenizer": load_clip_tokenizer(),
        "text_encoder": text_encoder.eval(),
        "unet": unet.eval(),
        "vae": vae.eval(),
        "scheduler_config": dict(SCHEDULER_CONFIG),
    }
