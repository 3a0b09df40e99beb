"""SDXL conditioning: both text encoders, the pooled projection and the size/crop micro-conditioning.

An SDXL UNet takes, besides the noisy latents and the timestep:

* ``encoder_hidden_states``: CLIP-L's and OpenCLIP-bigG's penultimate hidden states side by side (768 + 1280 =
  2048 wide on the real model), each computed by the same chunking, emphasis, BREAK and embedding splicing as
  SD 1.x (`trainer.prompts.conditioning.PromptEncoder`; each encoder restores its own chunk means, as the reference does).
  "Clip skip" N > 1 moves both one layer further back per step; no final layer norm (as SDXL was trained).
* ``text_embeds``: the second encoder's projected pooled output, of each prompt's first chunk (the reference's
  choice for long prompts).
* ``time_ids``: six numbers per image: its original height and width, the top/left of the crop taken from it,
  and the target height and width (what the model was asked to draw). Training uses each image's own; txt2img
  asks for the output size with no crop, which is what SDXL was trained to produce best.

An SDXL embedding is one tensor ``[n, clip_l width + clip_g width]`` here (clip_l first), split for the two
encoders; its file keeps the halves as ``clip_l`` and ``clip_g`` (see `trainer.embeddings.core`).

The SDXL VAE overflows in fp16 (its config says ``force_upcast``): `vae_precision` runs it in fp32.
"""
from contextlib import contextmanager
from typing import Mapping

import torch

from trainer.prompts.conditioning import PromptEncoder
from common.errors import UserError


class _SDXLTower(PromptEncoder):
    """One of SDXL's text encoders: the penultimate hidden state (further back with clip skip), no final norm,
    and the projected pooled output when the encoder has a projection (the second one)."""

    def _run_encoder(self, ids: torch.Tensor):
        outputs = self.text_encoder(input_ids=ids, output_hidden_states=True)
        states = outputs.hidden_states
        return states[-min(1 + self.clip_skip, len(states))], getattr(outputs, "text_embeds", None)


class SDXLPromptEncoder:
    """Prompts -> ``(context [B, 77 * chunks, clip_l + clip_g], pooled [B, projection])`` for an SDXL UNet.

    ``embeddings`` maps names to ``[n, clip_l + clip_g]`` vectors (they may require grad; both halves get
    gradients)."""

    def __init__(self, tokenizer, text_encoder, tokenizer_2, text_encoder_2,
                 embeddings: Mapping[str, torch.Tensor] = {}, clip_skip: int = 1):
        width_l = text_encoder.get_input_embeddings().weight.shape[1]
        width = width_l + text_encoder_2.get_input_embeddings().weight.shape[1]
        vectors = {name: vec if vec.dim() == 2 else vec.reshape(1, -1) for name, vec in embeddings.items()}
        for name, vec in vectors.items():
            if vec.shape[-1] != width:
                raise UserError(f"Embedding {name} has vectors {vec.shape[-1]} wide; this SDXL model needs "
                                f"{width} (clip_l {width_l} + clip_g {width - width_l}).")
        self.clip_l = _SDXLTower(tokenizer, text_encoder, {n: v[:, :width_l] for n, v in vectors.items()}, clip_skip)
        self.clip_g = _SDXLTower(tokenizer_2, text_encoder_2, {n: v[:, width_l:] for n, v in vectors.items()},
                                 clip_skip)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        context_l, _ = self.clip_l.encode(prompts)
        context_g, pooled = self.clip_g.encode(prompts)
        return torch.cat([context_l, context_g.to(context_l.dtype)], dim=-1), pooled

    def count_tokens(self, prompt: str, steps: int = 20) -> tuple[int, int]:
        return self.clip_l.count_tokens(prompt, steps)


def prompt_encoder_for(model, embeddings: Mapping[str, torch.Tensor] = {}, clip_skip: int = 1):
    """The prompt encoder the model needs: `SDXLPromptEncoder` on SDXL, `PromptEncoder` otherwise."""
    if getattr(model, "is_sdxl", False):
        return SDXLPromptEncoder(model.tokenizer, model.text_encoder, model.tokenizer_2, model.text_encoder_2,
                                 embeddings, clip_skip)
    return PromptEncoder(model.tokenizer, model.text_encoder, embeddings, clip_skip=clip_skip)


def time_ids(original_sizes, crops, target_size, device=None) -> torch.Tensor:
    """``[B, 6]``: (original h, original w, crop top, crop left, target h, target w) for each image."""
    rows = [[*original, *crop, *target_size] for original, crop in zip(original_sizes, crops)]
    return torch.tensor(rows, dtype=torch.float32, device=device)


def size_time_ids(height: int, width: int, count: int, device=None) -> torch.Tensor:
    """txt2img's micro-conditioning: an uncropped image of the size asked for."""
    return time_ids([(height, width)] * count, [(0, 0)] * count, (height, width), device)


def unet_inputs(encoded, time_ids_: torch.Tensor | None = None) -> dict:
    """Keyword arguments for the UNet: the context alone (SD 1.x/2.x), or on SDXL (``encoded`` is
    ``(context, pooled)``) the context plus the added pooled text and size/crop conditioning."""
    if not isinstance(encoded, tuple):
        return {"encoder_hidden_states": encoded}
    context, pooled = encoded
    return {"encoder_hidden_states": context,
            "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids_.to(context.device)}}


def batch_time_ids(batch, latents: torch.Tensor, vae_scale_factor: int) -> torch.Tensor:
    """A training batch's micro-conditioning: each image's original size and crop; the target is the size the
    latents decode to."""
    target = (latents.shape[-2] * vae_scale_factor, latents.shape[-1] * vae_scale_factor)
    return time_ids(batch.original_sizes, batch.crops, target, latents.device)


@contextmanager
def vae_precision(model):
    """Run the VAE of an SDXL model in fp32: autocast off, and fp16 weights (if any) upcast for the call.
    SD 1.x/2.x VAEs are left as they are."""
    vae = model.vae
    if not (getattr(model, "is_sdxl", False) and getattr(vae.config, "force_upcast", False)):
        yield
        return
    param = next(vae.parameters())
    original = param.dtype
    with torch.autocast(param.device.type, enabled=False):
        if original != torch.float32:
            vae.to(torch.float32)
        try:
            yield
        finally:
            if original != torch.float32:
                vae.to(original)


HYPERNETWORK_REFUSAL = ("Hypernetwork training is not available for SDXL models (the reference has none for them); "
                        "train a textual-inversion embedding instead, or load an SD 1.x/2.x model.")


def refuse_sdxl_hypernetwork_training(model) -> None:
    """A UserError sentence when `model` is SDXL."""
    if getattr(model, "is_sdxl", False):
        raise UserError(HYPERNETWORK_REFUSAL)
