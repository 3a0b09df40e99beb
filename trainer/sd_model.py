"""The loaded Stable Diffusion model: its components, passed around explicitly."""
from dataclasses import dataclass

import torch


@dataclass
class SDModel:
    """Everything the engine needs from a checkpoint. Created by `trainer.models.load_model`."""

    name: str  # what the checkpoint dropdown shows, e.g. "demo" or "v1-5-pruned.safetensors"
    checkpoint_hash: str  # short hash (10 hex digits), written as `sd_checkpoint` into embeddings
    tokenizer: object  # transformers.CLIPTokenizer
    text_encoder: torch.nn.Module  # transformers.CLIPTextModel
    unet: torch.nn.Module  # diffusers.UNet2DConditionModel
    vae: torch.nn.Module  # diffusers.AutoencoderKL
    scheduler_config: dict  # the training noise scheduler's config (DDPM-compatible)
    device: torch.device
    dtype: torch.dtype = torch.float32  # compute dtype for autocast on GPU; weights stay fp32 on CPU

    @property
    def text_width(self) -> int:
        return self.text_encoder.get_input_embeddings().weight.shape[1]

    @property
    def prediction_type(self) -> str:
        return self.scheduler_config.get("prediction_type", "epsilon")

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_scale(self) -> float:
        return self.vae.config.scaling_factor

    @property
    def native_size(self) -> int:
        """The image side the model was trained at (512 for SD 1.x, 768 for SD 2.x-v, 128 for the demo):
        the UNet's configured latent size times the VAE's downscale."""
        return int(self.unet.config.sample_size) * self.vae_scale_factor
