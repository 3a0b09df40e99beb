"""Textual-inversion embeddings: the `Embedding` type, every file format, creation, and the embeddings folder.

Public API (the format details live in `trainer.embeddings.core`, `trainer.embeddings.files` and
`trainer.embeddings.images`; everything is importable from here):

* `Embedding`, `EmbeddingReadError`
* `save_embedding`, `save_embedding_pt`, `save_embedding_safetensors`, `read_embedding_file`
* `write_image_embedding`, `read_image_embedding`
* `save_optimizer_state`, `load_optimizer_state`, `optimizer_state_path`
* `clean_embedding_name`, `create_embedding`
* `load_embeddings_dir`, `to_api_json`
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from trainer.embeddings.core import (
    Embedding,
    EmbeddingReadError,
    embedding_from_data,
    embedding_to_reference_dict,
    fit_reason,
    vectors_checksum,
)
from trainer.embeddings.files import (
    PICKLE_EXTENSIONS,
    SAFETENSORS_EXTENSIONS,
    atomic_write,
    load_optimizer_state,
    optimizer_state_path,
    read_pickle_embedding,
    read_safetensors_embedding,
    save_embedding,
    save_embedding_pt,
    save_embedding_safetensors,
    save_optimizer_state,
)
from trainer.embeddings.images import IMAGE_EXTENSIONS, read_image_embedding, write_image_embedding
from common.errors import UserError
from trainer.locks import refuse_if_locked
from trainer.names import check_name_length, find_named_file, walk_files

EMBEDDING_EXTENSIONS = PICKLE_EXTENSIONS + SAFETENSORS_EXTENSIONS + IMAGE_EXTENSIONS
MAX_VECTORS = 75  # one 75-token prompt chunk


def read_embedding_file(path: str | os.PathLike) -> Embedding | None:
    """Read one embedding file of any supported kind.

    Returns None for files that are not embeddings at all (another extension, ``*.preview.png``, a picture
    with no embedding data); raises `EmbeddingReadError` with the reason for an embedding that cannot be used.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in PICKLE_EXTENSIONS:
        return read_pickle_embedding(path)
    if suffix in SAFETENSORS_EXTENSIONS:
        return read_safetensors_embedding(path)
    if suffix in IMAGE_EXTENSIONS:
        if Path(path.stem).suffix.lower() == ".preview":
            return None
        return read_image_embedding(path)
    return None


# ------------------------------------------------------------------------------------------------ create


def clean_embedding_name(name: str) -> str:
    """Keep letters, digits and ``._- `` (the reference's rule), then strip surrounding spaces."""
    return "".join(ch for ch in str(name) if ch.isalnum() or ch in "._- ").strip()


def _init_vectors(tokenizer, text_encoder, init_text: str, num_vectors: int) -> torch.Tensor:
    """Seed vectors from the raw token-embedding rows of ``init_text`` (no BOS/EOS, no position embeddings).

    The text is cut to its first ``num_vectors`` tokens; vector i takes token ``i * n_tokens // num_vectors``,
    so a short text is stretched over all vectors. Text without tokens gives all-zero vectors.
    """
    table = text_encoder.get_input_embeddings().weight
    vectors = torch.zeros(num_vectors, table.shape[1], dtype=torch.float32)
    ids = tokenizer(init_text or "", add_special_tokens=False)["input_ids"][:num_vectors] if init_text else []
    if ids:
        with torch.no_grad():
            rows = table[torch.tensor(ids, dtype=torch.long, device=table.device)].detach().to("cpu", torch.float32)
        for i in range(num_vectors):
            vectors[i] = rows[i * len(ids) // num_vectors]
    return vectors


def _existing_embedding_file(embeddings_dir: Path, name: str) -> Path | None:
    """The file of that name anywhere under the folder (a name exists once, subfolders included)."""
    return find_named_file(embeddings_dir, name, EMBEDDING_EXTENSIONS)


def create_embedding(
    tokenizer,
    text_encoder,
    name: str,
    init_text: str = "*",
    num_vectors: int = 1,
    overwrite: bool = False,
    embeddings_dir: str | os.PathLike = "embeddings",
    checkpoint_hash: str | None = None,
    checkpoint_name: str | None = None,
    file_format: str = "pt",
    text_encoder_2=None,
) -> Path:
    """Create ``<embeddings_dir>/<clean name>.pt`` (or ``.safetensors`` with ``file_format="safetensors"``) at
    step 0 and return its path (the Create embedding tab).

    Refused with `UserError`: a name with no letter or digit after cleaning, a vector count outside 1..75, and
    an existing embedding of that name (``<name>.pt``, ``.bin``, ``.safetensors``, ``.png``...) unless
    ``overwrite``, which replaces a ``.pt``/``.safetensors`` file of that name in place (keeping its format), so
    no second file of the same name appears.

    SDXL (``text_encoder_2`` given): vectors for both encoders from the same init text (the encoders share the
    tokenizer's vocabulary), written as ``.safetensors`` with ``clip_l`` and ``clip_g`` keys whichever format
    was asked for (what the reference, kohya, ComfyUI and diffusers read).
    """
    if file_format not in ("pt", "safetensors"):
        raise UserError(f"Embedding file format must be pt or safetensors, not {file_format!r}.")
    clean = clean_embedding_name(name)
    if not any(ch.isalnum() for ch in clean):
        raise UserError("Please enter a name for the embedding: letters, digits, spaces and . _ - are allowed.")
    check_name_length(clean, "embedding")
    try:
        count = int(num_vectors)
    except (TypeError, ValueError):
        raise UserError(f"The number of vectors per token must be a whole number from 1 to {MAX_VECTORS}.") from None
    if count != num_vectors or not 1 <= count <= MAX_VECTORS:
        raise UserError(f"The number of vectors per token must be a whole number from 1 to {MAX_VECTORS}.")
    directory = Path(embeddings_dir)
    if directory.exists() and not directory.is_dir():
        raise UserError(f"The embeddings folder {directory} is a file, not a folder.")
    existing = _existing_embedding_file(directory, clean)
    if existing is not None and not overwrite:
        raise UserError(f"An embedding named '{clean}' already exists ({existing}).", control="overwrite")
    refuse_if_locked(directory, clean, "embedding", "overwritten")
    vectors, clip_l_width = _init_vectors(tokenizer, text_encoder, init_text, count), None
    if text_encoder_2 is not None:
        clip_l_width = vectors.shape[1]
        vectors = torch.cat([vectors, _init_vectors(tokenizer, text_encoder_2, init_text, count)], dim=1)
        file_format = "safetensors"
    embedding = Embedding(
        name=clean,
        vectors=vectors,
        step=0,
        sd_checkpoint=checkpoint_hash,
        sd_checkpoint_name=checkpoint_name,
        clip_l_width=clip_l_width,
    )
    target = directory / f"{clean}.{file_format}"
    if existing is not None:  # replaced where it is, keeping its format (a picture's becomes a .pt beside it)
        target = existing if existing.suffix.lower() in (".pt", ".safetensors") else existing.with_suffix(".pt")
    path = save_embedding(embedding, target)
    embedding.filename = str(path)
    return path


# ------------------------------------------------------------------------------------------- the folder


def load_embeddings_dir(
    directory: str | os.PathLike, expected_width: int | None, tokenizer=None, clip_l_width: int | None = None
) -> tuple[dict[str, Embedding], dict[str, tuple[Embedding | None, str]]]:
    """Load every embedding under ``directory`` (recursively).

    Returns ``(loaded, skipped)``: ``loaded`` maps name → `Embedding` (sorted by lower-cased name, as the
    reference); ``skipped`` maps name → (`Embedding` or None, reason) for files that are embeddings but cannot
    be used: another width than ``expected_width`` (None accepts any), the wrong family (``clip_l_width`` given:
    an SDXL model, which takes only SDXL embeddings with that clip_l width; not given: no SDXL ones), unreadable or unsafe files, a name with no
    tokens (when ``tokenizer`` is given), a duplicate name. Files of other kinds, zero-byte files,
    ``*.preview.png`` and pictures without embedding data are ignored silently. Never raises for a bad file.

    Duplicate names: files are read in sorted path order (a folder's own files before its subfolders') and,
    as in the reference, a later file replaces an earlier one of the same name; the replaced one is listed as
    skipped, saying which file won. A skipped entry whose name is already taken is keyed by its relative path.
    """
    root = Path(directory)
    loaded: dict[str, Embedding] = {}
    skipped: dict[str, tuple[Embedding | None, str]] = {}

    def skip(key: str, path: Path, embedding: Embedding | None, reason: str) -> None:
        if key in skipped or key in loaded:
            key = path.relative_to(root).as_posix()
        skipped[key] = (embedding, reason)

    if not root.is_dir():
        return loaded, skipped
    for path in walk_files(root):
        if path.suffix.lower() not in EMBEDDING_EXTENSIONS:
            continue
        try:
            if path.stat().st_size == 0:
                continue
            embedding = read_embedding_file(path)
        except EmbeddingReadError as error:
            skip(path.stem, path, None, str(error))
            continue
        except Exception as error:  # a reader bug must not stop the whole folder from loading
            skip(path.stem, path, None, f"could not be read ({type(error).__name__}: {error})")
            continue
        if embedding is None:
            continue
        reason = fit_reason(embedding, expected_width, clip_l_width) if expected_width is not None else None
        if reason is not None:
            skip(embedding.name, path, embedding, reason)
            continue
        if tokenizer is not None and not tokenizer(embedding.name, add_special_tokens=False)["input_ids"]:
            skip(embedding.name, path, embedding, "the name has no tokens, so no prompt can use it")
            continue
        previous = loaded.pop(embedding.name, None)
        if previous is not None:
            winner = path.relative_to(root).as_posix()
            skipped_path = Path(previous.filename) if previous.filename else path
            reason = f"another embedding with the same name was loaded from {winner}"
            skip(previous.name, skipped_path, previous, reason)
        loaded[embedding.name] = embedding
    loaded = dict(sorted(loaded.items(), key=lambda item: item[0].lower()))
    return loaded, skipped


def _api_entry(embedding: Embedding | None) -> dict:
    if embedding is None:
        return {"step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": None, "vectors": None}
    return {
        "step": embedding.step,
        "sd_checkpoint": embedding.sd_checkpoint,
        "sd_checkpoint_name": embedding.sd_checkpoint_name,
        "shape": embedding.width,  # the reference API calls the width "shape"
        "vectors": embedding.num_vectors,
    }


def to_api_json(loaded: dict[str, Embedding], skipped: dict[str, tuple[Embedding | None, str]]) -> dict:
    """The reference API's ``/sdapi/v1/embeddings`` shape, with a ``reason`` for each skipped entry."""
    return {
        "loaded": {name: _api_entry(embedding) for name, embedding in loaded.items()},
        "skipped": {name: {**_api_entry(embedding), "reason": reason} for name, (embedding, reason) in skipped.items()},
    }


__all__ = [
    "EMBEDDING_EXTENSIONS",
    "Embedding",
    "EmbeddingReadError",
    "MAX_VECTORS",
    "atomic_write",
    "clean_embedding_name",
    "create_embedding",
    "embedding_from_data",
    "embedding_to_reference_dict",
    "load_embeddings_dir",
    "load_optimizer_state",
    "optimizer_state_path",
    "read_embedding_file",
    "read_image_embedding",
    "save_embedding",
    "save_embedding_pt",
    "save_embedding_safetensors",
    "save_optimizer_state",
    "to_api_json",
    "vectors_checksum",
    "write_image_embedding",
]
