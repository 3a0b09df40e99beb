"""The `Embedding` type and the translation between it and the data found inside embedding files.

Every reader (``.pt``/``.bin``, ``.safetensors``, images) ends up with a plain mapping; `embedding_from_data`
turns it into an `Embedding` or says, in one sentence, why it cannot. `embedding_to_reference_dict` is the
reverse: the dict the reference webui writes with ``torch.save`` (and embeds, as JSON, in images).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

# The reference writes this constant token id into every file; readers ignore it.
REFERENCE_TOKEN_ID = 265

# Text-encoder widths of the model families, for a helpful hint when an embedding does not fit.
FAMILY_BY_WIDTH = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


class EmbeddingReadError(Exception):
    """A file that looks like an embedding but cannot be used; the message is the reason shown to the user."""


@dataclass
class Embedding:
    """A textual-inversion embedding: ``vectors`` is a float32 CPU tensor of shape [n_vectors, dim]."""

    name: str
    vectors: torch.Tensor
    step: int | None = None
    sd_checkpoint: str | None = None  # short hash of the checkpoint it was trained on
    sd_checkpoint_name: str | None = None
    filename: str | None = None  # where it was read from (None for one made in memory)
    # SDXL: ``vectors`` are the clip_l and clip_g halves side by side; this is the clip_l half's width.
    clip_l_width: int | None = None

    @property
    def is_sdxl(self) -> bool:
        return self.clip_l_width is not None

    def halves(self) -> tuple[torch.Tensor, torch.Tensor]:
        """SDXL: (clip_l vectors, clip_g vectors)."""
        return self.vectors[:, :self.clip_l_width], self.vectors[:, self.clip_l_width:]

    @property
    def num_vectors(self) -> int:
        """Number of vectors (tokens) this embedding stands for in a prompt."""
        return int(self.vectors.shape[0])

    @property
    def width(self) -> int:
        """Width of each vector; must equal the text encoder's width (768 SD 1.x, 1024 SD 2.x)."""
        return int(self.vectors.shape[-1])


def clean_vectors(tensor: Any, what: str = "embedding tensor") -> torch.Tensor:
    """Return ``tensor`` as a detached, contiguous float32 CPU tensor of shape [n, dim], or raise a reason."""
    if not isinstance(tensor, torch.Tensor):
        raise EmbeddingReadError(f"the {what} is a {type(tensor).__name__}, not a tensor")
    if not tensor.is_floating_point():
        raise EmbeddingReadError(f"the {what} has dtype {tensor.dtype}, not a float type")
    vectors = tensor.detach().to("cpu", torch.float32)
    if vectors.ndim == 1:
        vectors = vectors.unsqueeze(0)
    if vectors.ndim != 2 or vectors.shape[0] == 0 or vectors.shape[1] == 0:
        raise EmbeddingReadError(f"the {what} has shape {list(tensor.shape)}, expected [vectors, width]")
    if not torch.isfinite(vectors).all():
        raise EmbeddingReadError(f"the {what} contains NaN or infinite values")
    return vectors.contiguous().clone()


def _optional_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _optional_int(value: Any) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return int(value.item())
    return None


def embedding_from_data(data: Any, name: str, filename: str | None = None) -> Embedding:
    """Interpret the contents of an embedding file.

    Layouts, tried in the reference's order:
      * A1111: ``{"string_to_param": {"*": tensor[n, dim]}, "step": ..., "sd_checkpoint": ..., ...}``
      * SDXL: ``{"clip_l": tensor[n, 768], "clip_g": tensor[n, 1280]}``. Kept as the two halves concatenated
        ([n, 2048], clip_l first, ``clip_l_width`` = 768); with an SD 1.x/2.x model it is listed as skipped,
        exactly as the reference does with a non-SDXL model (see `fit_reason`).
      * diffusers concept / any single key: ``{"<token>": tensor[dim] or tensor[n, dim]}``.
    Raises `EmbeddingReadError` with the reason when none fits.
    """
    if not isinstance(data, Mapping):
        raise EmbeddingReadError(f"the file holds a {type(data).__name__}, not an embedding dictionary")
    clip_l_width = None
    if "string_to_param" in data:
        params = data["string_to_param"]
        params = getattr(params, "_parameters", params)  # torch 1.11-era files saved a ParameterDict
        if not isinstance(params, Mapping) or len(params) != 1:
            count = len(params) if isinstance(params, Mapping) else 0
            raise EmbeddingReadError(f"the embedding file has {count} terms in it, expected exactly one")
        vectors = clean_vectors(next(iter(params.values())))
    elif "clip_l" in data and "clip_g" in data:
        clip_l = clean_vectors(data["clip_l"], "clip_l tensor")
        clip_g = clean_vectors(data["clip_g"], "clip_g tensor")
        if clip_l.shape[0] != clip_g.shape[0]:
            raise EmbeddingReadError("the clip_l and clip_g tensors have different numbers of vectors")
        vectors = torch.cat([clip_l, clip_g], dim=1)
        clip_l_width = clip_l.shape[1]
    else:
        tensors = [v for v in data.values() if isinstance(v, torch.Tensor)]
        if not tensors:
            raise EmbeddingReadError("the file is neither a textual-inversion embedding nor a diffusers concept")
        if len(data) != 1:
            raise EmbeddingReadError(f"the embedding file has {len(data)} terms in it, expected exactly one")
        vectors = clean_vectors(tensors[0])
    return Embedding(
        name=name,
        vectors=vectors,
        step=_optional_int(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
        filename=filename,
        clip_l_width=clip_l_width,
    )


def embedding_to_reference_dict(embedding: Embedding) -> dict:
    """The dict the reference saves with ``torch.save`` (and diffusers' ``load_textual_inversion`` reads).

    SDXL: ``clip_l`` and ``clip_g`` tensors instead of ``string_to_param`` (what the reference, kohya and ComfyUI
    read), with the same name/step/checkpoint fields."""
    info = {"name": embedding.name, "step": embedding.step, "sd_checkpoint": embedding.sd_checkpoint,
            "sd_checkpoint_name": embedding.sd_checkpoint_name}
    if embedding.is_sdxl:
        clip_l, clip_g = (half.detach().to("cpu", torch.float32).contiguous().clone() for half in embedding.halves())
        return {"clip_l": clip_l, "clip_g": clip_g, **info}
    return {
        "string_to_token": {"*": REFERENCE_TOKEN_ID},
        "string_to_param": {"*": embedding.vectors.detach().to("cpu", torch.float32).contiguous().clone()},
        "name": embedding.name,
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
    }


def vectors_checksum(vectors: torch.Tensor) -> str:
    """The reference's 4-hex-digit checksum of an embedding's vectors (it keys the saved optimizer state).

    Same arithmetic as the reference: each value times 100, truncated to an int, folded in order.
    """
    folded = 0
    for value in (vectors.detach().to("cpu", torch.float32).reshape(-1) * 100).tolist():
        folded = (folded * 281 ^ int(value) * 997) & 0xFFFFFFFF
    return f"{folded & 0xFFFF:04x}"


def fit_reason(embedding: Embedding, width: int, clip_l_width: int | None = None) -> str | None:
    """Why ``embedding`` cannot be used with a model whose embedding vectors are ``width`` wide (and, on SDXL,
    whose clip_l part is ``clip_l_width`` wide), or None when it fits."""
    if clip_l_width is None:  # an SD 1.x/2.x model
        if embedding.width != width:
            return width_mismatch_reason(embedding.width, width)
        if embedding.is_sdxl:
            return "it is an SDXL embedding (clip_l and clip_g vectors) and this is not an SDXL model"
        return None
    if not embedding.is_sdxl:
        family = FAMILY_BY_WIDTH.get(embedding.width, "an SD 1.x/2.x")
        family = f"an {family}" if not family.startswith("an ") else family
        return (f"it is {family} embedding ({embedding.width}-wide vectors for one text encoder); an SDXL model "
                "needs clip_l and clip_g vectors")
    if embedding.clip_l_width != clip_l_width or embedding.width != width:
        return (f"its clip_l/clip_g widths {embedding.clip_l_width}/{embedding.width - embedding.clip_l_width} "
                f"do not match the model's {clip_l_width}/{width - clip_l_width}")
    return None


def width_mismatch_reason(width: int, expected: int) -> str:
    """One sentence saying why an embedding of ``width`` cannot be used with a model of width ``expected``."""
    family = FAMILY_BY_WIDTH.get(width)
    hint = f" (an {family} embedding?)" if family else ""
    return f"width {width} does not match the model's {expected}{hint}"
