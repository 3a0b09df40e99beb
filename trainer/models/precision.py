"""Precision and memory of a training run: mixed precision, the frozen weights' dtype, gradient checkpointing.

* ``mixed_precision`` ("Mixed precision" in the Train tab, ``--mixed-precision``, the settings JSON):
  ``no`` (fp32), ``fp16`` (CUDA only) or ``bf16``; empty means the device's default, fp16 on CUDA and no
  elsewhere. The forward and backward passes run under autocast in that dtype (with a loss scaler for fp16,
  through accelerate); the trained vectors (or hypernetwork) and the optimizer state always stay fp32, and so
  do the saved files.
* On CUDA the frozen text encoder and UNet are also *held* in that dtype for the run (half the memory of
  fp32 weights, as the reference keeps them). Where the cast would lose precision (fp32 -> fp16/bf16) the
  fp32 weights are parked in CPU memory and put back when the run ends, so txt2img afterwards sees exactly
  the loaded model. On the CPU the weights stay fp32 and only the compute is bf16 (CPU memory is not what
  limits training there, and parking a copy would cost more than the cast saves).
* The VAE is never cast: it encodes the training images (before the loop) and decodes previews in fp32, so
  fp16 overflow in its decoder cannot turn a preview into NaNs (see `sampling._decode`).
* ``gradient_checkpointing``: the UNet's blocks keep only their inputs during the forward pass and recompute
  the rest in backward - much less activation memory for about a third more compute per step. Off again
  after the run (previews and txt2img never use it: they run without gradients).
Attention runs through PyTorch's scaled-dot-product attention (diffusers' default processor, and our
hypernetwork processor), which picks the flash / memory-efficient kernels on a GPU by itself.
"""
import contextlib

import torch

from common.errors import UserError

DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FROZEN_PARTS = ("text_encoder", "text_encoder_2", "unet")  # (text_encoder_2: SDXL's second encoder, when there)


def resolve_mixed_precision(choice: str, device) -> str:
    """"no" | "fp16" | "bf16" for `device`; "" picks the default (fp16 on CUDA, no elsewhere). A choice the
    device cannot do is a sentence."""
    device_type = torch.device(device).type
    choice = (choice or "").strip().lower() or ("fp16" if device_type == "cuda" else "no")
    if choice not in DTYPES:
        raise UserError(f"Mixed precision must be no, fp16 or bf16, not {choice!r}.")
    if choice == "fp16" and device_type != "cuda":
        raise UserError(f"fp16 mixed precision needs a CUDA GPU; on the {device_type} choose bf16 or no.")
    if choice == "bf16" and device_type == "cuda" and not torch.cuda.is_bf16_supported():
        raise UserError("This GPU does not support bf16; choose fp16 or no.")
    return choice


def _lossy(old: torch.dtype, new: torch.dtype) -> bool:
    """Whether old -> new -> old changes values (fp16 and bf16 fit exactly into fp32, nothing else round-trips)."""
    return old != new and new != torch.float32


@contextlib.contextmanager
def hold_frozen_weights(model, dtype: torch.dtype):
    """Within the block the text encoder(s) and UNet hold their weights in `dtype`; afterwards they are exactly
    what they were (fp32 originals parked on the CPU when the cast loses precision)."""
    saved = []
    try:
        for name in FROZEN_PARTS:
            module = getattr(model, name, None)
            if module is None:
                continue
            old = next(module.parameters()).dtype
            if old == dtype:
                continue
            parked = ({k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
                      if _lossy(old, dtype) else None)
            saved.append((module, old, parked))
            module.to(dtype=dtype)
        yield
    finally:
        for module, old, parked in reversed(saved):
            module.to(dtype=old)
            if parked is not None:
                module.load_state_dict(parked)


@contextlib.contextmanager
def gradient_checkpointing(unet, enabled: bool):
    """UNet gradient checkpointing inside the block when `enabled` (and as it was afterwards)."""
    if not enabled or getattr(unet, "is_gradient_checkpointing", False):
        yield
        return
    unet.enable_gradient_checkpointing()
    try:
        yield
    finally:
        unet.disable_gradient_checkpointing()


@contextlib.contextmanager
def training_precision(model, accelerator, checkpointing: bool):
    """What a run needs around its loop: on CUDA the frozen weights in the run's dtype, and the UNet's
    gradient checkpointing when asked."""
    dtype = DTYPES.get(str(accelerator.mixed_precision), torch.float32)
    cast = dtype if model.device.type == "cuda" else next(model.unet.parameters()).dtype
    with hold_frozen_weights(model, cast), gradient_checkpointing(model.unet, checkpointing):
        yield


def weights_note(model, accelerator, checkpointing: bool) -> str:
    """One line for the log: how this run computes and holds its weights."""
    mixed = str(accelerator.mixed_precision)
    held = DTYPES.get(mixed, torch.float32) if model.device.type == "cuda" else next(model.unet.parameters()).dtype
    return (f"Precision: {mixed} mixed precision, frozen weights in {str(held).replace('torch.', '')}, trained "
            f"weights in float32, gradient checkpointing {'on' if checkpointing else 'off'}.")
