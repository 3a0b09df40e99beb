"""The loaded Stable Diffusion model: its components, passed around explicitly."""
from dataclasses import dataclass

import torch


@dataclass
class SDModel:
    """Everything the engine needs from a checkpoint. Created by `trainer.models.loading.load_model`."""

    name: str  # what the checkpoint dropdown shows, e.g. "demo" or "v1-5-pruned.safetensors"
    checkpoint_hash: str  # short hash (10 hex digits), written as `sd_checkpoint` into embeddings
    tokenizer: object  # transformers.CLIPTokenizer
    text_encoder: torch.nn.Module  # transformers.CLIPTextModel
    unet: torch.nn.Module  # diffusers.UNet2DConditionModel
    vae: torch.nn.Module  # diffusers.AutoencoderKL
    scheduler_config: dict  # the training noise scheduler's config (DDPM-compatible)
    device: torch.device
    dtype: torch.dtype = torch.float32  # compute dtype for autocast on GPU; weights stay fp32 on CPU
    # SDXL only: the second text encoder (OpenCLIP ViT-bigG as CLIPTextModelWithProjection) and its tokenizer
    # (the same BPE, padding with "!"). None on SD 1.x/2.x.
    tokenizer_2: object = None
    text_encoder_2: torch.nn.Module | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.text_encoder_2 is not None

    @property
    def family(self) -> str:
        """"SDXL", "SD 2.x" or "SD 1.x" (by the text width; the demo model counts as SD 1.x-shaped)."""
        if self.is_sdxl:
            return "SDXL"
        return "SD 2.x" if self.text_encoder.config.hidden_act == "gelu" else "SD 1.x"

    @property
    def clip_l_width(self) -> int | None:
        """SDXL: the first encoder's width (the `clip_l` part of an embedding); None on SD 1.x/2.x."""
        return self.text_encoder.get_input_embeddings().weight.shape[1] if self.is_sdxl else None

    @property
    def text_width(self) -> int:
        """The width of an embedding vector: the text encoder's, or on SDXL both encoders' (clip_l + clip_g)."""
        width = self.text_encoder.get_input_embeddings().weight.shape[1]
        if self.is_sdxl:
            width += self.text_encoder_2.get_input_embeddings().weight.shape[1]
        return width

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
