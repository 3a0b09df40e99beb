"""Reading and writing embedding files: ``.pt``/``.bin`` (weights-only pickle), ``.safetensors``, optimizer state.

Nothing is ever unpickled freely: ``torch.load(..., weights_only=True)`` refuses any pickle that would build
arbitrary Python objects or call functions, and we report that refusal as the reason the file was skipped.
Every write goes to a temporary file in the target folder and is moved into place with ``os.replace``.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from common.errors import first_line
from common.files import atomic_write
from trainer.embeddings.core import (
    Embedding,
    EmbeddingReadError,
    embedding_from_data,
    embedding_to_reference_dict,
    vectors_checksum,
)

PICKLE_EXTENSIONS = (".pt", ".bin")
SAFETENSORS_EXTENSIONS = (".safetensors",)
SAFETENSORS_KEY = "emb_params"


def torch_save_compatible(obj, path: str | os.PathLike) -> None:
    """``torch.save`` in the container the reference webui's pickle check accepts.

    The reference refuses any zip entry other than ``data.pkl``, ``version`` and ``data/<n>``; torch >= 2.1 adds
    ``byteorder``, ``.data/serialization_id``, ``.format_version``... ("bad file inside", reference issues #14261,
    #15214). The legacy (non-zip) container has none of them, references only tensor-rebuild globals, and every
    torch (``weights_only=True`` included) and diffusers still read it.
    """
    torch.save(obj, path, _use_new_zipfile_serialization=False)


def save_embedding_pt(embedding: Embedding, path: str | os.PathLike) -> Path:
    """Write the reference ``.pt`` layout (readable by the reference webui and by diffusers)."""
    data = embedding_to_reference_dict(embedding)
    return atomic_write(path, lambda temp: torch_save_compatible(data, temp))


def save_embedding_safetensors(embedding: Embedding, path: str | os.PathLike) -> Path:
    """Write ``{"emb_params": tensor[n, dim]}`` (SDXL: ``{"clip_l": ..., "clip_g": ...}``) with
    name/step/checkpoint as string metadata."""
    metadata = {"name": embedding.name}
    for key in ("step", "sd_checkpoint", "sd_checkpoint_name"):
        value = getattr(embedding, key)
        if value is not None:
            metadata[key] = str(value)
    tensors = {SAFETENSORS_KEY: embedding.vectors.detach().to("cpu", torch.float32).contiguous()}
    if embedding.is_sdxl:
        tensors = dict(zip(("clip_l", "clip_g"), (half.detach().to("cpu", torch.float32).contiguous()
                                                  for half in embedding.halves())))
    return atomic_write(path, lambda temp: safetensors.torch.save_file(tensors, temp, metadata=metadata))


def save_embedding(embedding: Embedding, path: str | os.PathLike) -> Path:
    """Save by extension: ``.safetensors`` → safetensors, anything else → the reference ``.pt`` layout."""
    if str(path).lower().endswith(".safetensors"):
        return save_embedding_safetensors(embedding, path)
    return save_embedding_pt(embedding, path)


def _unsafe_pickle_reason(error: Exception) -> str:
    match = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
    what = f" ({match.group(1)})" if match else ""
    return (
        "refused to load: the file is a pickle that would run code or build Python objects other than "
        f"tensors{what}; it was not executed"
    )


def _allow_parameter_dict():
    """Allow ``torch.nn.ParameterDict`` in a weights-only load (a no-op on torch < 2.5, which lacks the hook)."""
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    return safe_globals([torch.nn.ParameterDict]) if safe_globals else contextlib.nullcontext()


def load_weights_only(path: str | os.PathLike):
    """``torch.load`` restricted to tensors and plain containers; raises `EmbeddingReadError` with a reason.

    ``torch.nn.ParameterDict`` is allowed as well: embeddings saved by torch 1.11-era webuis hold one.
    """
    try:
        with _allow_parameter_dict():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*$", str(error), re.MULTILINE)
        if "Weights only load failed" in str(error) and not (detail and "Unsupported operand" in detail.group(1)):
            raise EmbeddingReadError(_unsafe_pickle_reason(error)) from None
        what = detail.group(1) if detail and detail.group(1) else first_line(error)
        raise EmbeddingReadError(f"the file is not a readable PyTorch file ({what[:200]})") from None
    except Exception as error:  # corrupt zip, truncated file, wrong format...
        raise EmbeddingReadError(f"the file is not a readable PyTorch file ({first_line(error)})") from None


def read_pickle_embedding(path: str | os.PathLike) -> Embedding:
    """Read a ``.pt``/``.bin`` embedding (A1111 dict or diffusers concept); the name is the file stem."""
    path = Path(path)
    return embedding_from_data(load_weights_only(path), name=path.stem, filename=str(path))


def read_safetensors_embedding(path: str | os.PathLike) -> Embedding:
    """Read a ``.safetensors`` embedding (``emb_params``, SDXL ``clip_l``+``clip_g``, or any single key)."""
    path = Path(path)
    try:
        with safetensors.safe_open(str(path), framework="pt", device="cpu") as handle:
            metadata = handle.metadata() or {}
            data = {key: handle.get_tensor(key) for key in handle.keys()}
    except Exception as error:
        raise EmbeddingReadError(f"the file is not a readable safetensors file ({first_line(error)})") from None
    embedding = embedding_from_data(data, name=path.stem, filename=str(path))
    # The reference ignores safetensors metadata; we keep what our own writer stored, when it is there.
    if metadata.get("step", "").lstrip("-").isdigit():
        embedding.step = int(metadata["step"])
    embedding.sd_checkpoint = metadata.get("sd_checkpoint", embedding.sd_checkpoint)
    embedding.sd_checkpoint_name = metadata.get("sd_checkpoint_name", embedding.sd_checkpoint_name)
    return embedding


def optimizer_state_path(embedding_path: str | os.PathLike) -> Path:
    """Where the reference keeps an embedding's optimizer state: ``<file>.optim`` beside it."""
    return Path(f"{embedding_path}.optim")


def save_optimizer_state(embedding_path: str | os.PathLike, vectors: torch.Tensor, optimizer_state: dict) -> Path:
    """Save ``{"hash": checksum of the vectors, "optimizer_state_dict": ...}`` beside the embedding.

    The hash is the reference's checksum of the embedding's vectors, so a stale ``.optim`` (left beside a file
    that has changed since) is recognised and ignored on resume.
    """
    data = {"hash": vectors_checksum(vectors), "optimizer_state_dict": optimizer_state}
    return atomic_write(optimizer_state_path(embedding_path), lambda temp: torch_save_compatible(data, temp))


def load_optimizer_state(embedding_path: str | os.PathLike, vectors: torch.Tensor) -> dict | None:
    """The saved optimizer state for these vectors, or None when missing, unreadable, unsafe or stale."""
    path = optimizer_state_path(embedding_path)
    if not path.is_file():
        return None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(data, dict) or data.get("hash") != vectors_checksum(vectors):
        return None
    state = data.get("optimizer_state_dict")
    return state if isinstance(state, dict) else None


__all__ = [
    "atomic_write",
    "load_optimizer_state",
    "load_weights_only",
    "optimizer_state_path",
    "read_pickle_embedding",
    "read_safetensors_embedding",
    "save_embedding",
    "save_embedding_pt",
    "save_embedding_safetensors",
    "save_optimizer_state",
    "torch_save_compatible",
]
