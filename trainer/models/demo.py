"""The embedded demo model: a small Stable-Diffusion-shaped model that knows a toy world, no download.

Same shapes of data as SD 1.x (8x VAE downscale, 4 latent channels, 77-token CLIP text encoder with the real
CLIP vocabulary), but small: it was pretrained by scripts/pretrain_demo.py on the toy world of
trainer/toy/world.py (one coloured shape on a plain background) at 128x128 pixels (16x16 latents), and its
weights ship in trainer/assets/demo/demo.safetensors (stored as float16, loaded as float32). Loading reads
that file; nothing is trained or downloaded at start.

`build_demo_modules` builds the untrained architecture (the pretraining script starts from it);
`build_demo_components` the pretrained model the app loads as "demo".
"""
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from common.errors import UserError
from trainer.models.tokenizers import load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEMO_WEIGHTS = ASSETS / "demo" / "demo.safetensors"
TEXT_WIDTH = 64
NATIVE_SIZE = 128  # pixels; the size the demo was trained at
PREFIXES = ("text_encoder.", "unet.", "vae.")

# A DDPM noise schedule of the kind SD checkpoints ship (1000 steps, epsilon), with the original DDPM betas rather
# than SD 1.x's: on 16x16 latents SD's last timestep still leaves the background colour readable through the
# noise (the mean of 256 noisy pixels), so a model learns to copy it from the noise instead of from the caption,
# and at sampling time pure noise picks a random background. With these betas the last step's signal is ~10x
# weaker than that and the caption has to decide.
SCHEDULER_CONFIG = {
    "_class_name": "DDPMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.0001,
    "beta_end": 0.02,
    "beta_schedule": "linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}


def build_demo_modules(seed: int = 0, scaling_factor: float = 1.0) -> dict:
    """The demo architecture with fresh random weights (deterministic from the seed): text encoder, UNet, VAE.
    Each module draws from the seed on its own, so changing one module's shape leaves the others' start alone."""
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, hidden_size=TEXT_WIDTH, intermediate_size=4 * TEXT_WIDTH, num_attention_heads=4,
            num_hidden_layers=3, max_position_embeddings=77, hidden_act="quick_gelu",
            bos_token_id=49406, eos_token_id=49407, pad_token_id=49407, projection_dim=TEXT_WIDTH,
        ))
        torch.manual_seed(seed + 1)
        # Attention (self and cross) at the 8x8 and 4x4 levels only: the captions name whole-picture things (a
        # colour, one shape), and leaving it out at 16x16 halves the cost of a step.
        unet = UNet2DConditionModel(
            sample_size=NATIVE_SIZE // 8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(64, 128, 128),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            cross_attention_dim=TEXT_WIDTH, attention_head_dim=8, norm_num_groups=32,
        )
        torch.manual_seed(seed + 2)
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, norm_num_groups=32,
            block_out_channels=(32, 32, 64, 64), mid_block_add_attention=False,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            sample_size=NATIVE_SIZE, scaling_factor=scaling_factor,
        )
    finally:
        torch.random.set_rng_state(generator_state)
    return {"text_encoder": text_encoder, "unet": unet, "vae": vae}


def build_demo_components(weights: Path = DEMO_WEIGHTS) -> dict:
    """The pretrained demo model, from the shipped weights file (float16 on disk, float32 here)."""
    from safetensors import safe_open

    if not Path(weights).is_file():
        raise UserError(f"The demo model's weights are missing ('{weights}'); reinstall the app or run "
                        "scripts/pretrain_demo.py.")
    with safe_open(str(weights), framework="pt") as f:
        metadata = f.metadata() or {}
        state = {key: _upcast(f.get_tensor(key)) for key in f.keys()}
    modules = build_demo_modules(scaling_factor=float(metadata.get("scaling_factor", 1.0)))
    for prefix in PREFIXES:
        key = prefix[:-1]
        part = {name[len(prefix):]: tensor for name, tensor in state.items() if name.startswith(prefix)}
        modules[key].load_state_dict(part, strict=True)
    return {
        "tokenizer": load_tokenizer(),
        "text_encoder": modules["text_encoder"].eval(),
        "unet": modules["unet"].eval(),
        "vae": modules["vae"].eval(),
        "scheduler_config": dict(SCHEDULER_CONFIG),
    }


def demo_state_dict(modules: dict) -> dict[str, torch.Tensor]:
    """All weights under one prefix per module, as float16 (what demo.safetensors holds)."""
    state = {}
    for prefix in PREFIXES:
        for name, tensor in modules[prefix[:-1]].state_dict().items():
            tensor = tensor.detach()
            state[prefix + name] = (tensor.to(torch.float16) if tensor.is_floating_point() else tensor).contiguous()
    return state


def _upcast(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.float() if tensor.is_floating_point() else tensor
