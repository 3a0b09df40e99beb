"""The on-disk latent cache: every training image VAE-encoded once, kept across runs and resumes.

Where: ``<log directory>/latent_cache/`` by default (the Train tab's and CLI's log directory,
``textual_inversion/latent_cache/`` unless changed), or any folder given as "Latent cache directory"
(``--latent-cache-dir``). Deleting the folder is always safe: what is missing is encoded again.

What a file holds: for one image, at one size setting, through one VAE encoder, the posterior's ``mean`` and
``std`` (scaled like the latents the UNet sees) and, for an image with transparency, its alpha channel on the
latent grid as a loss weight, and the image's original size (metadata). Mean and std serve every latent
sampling method ("once" draws its sample from them with the run's seed, "deterministic" takes the mean,
"random" re-samples each time), so one entry serves all three. Sizes ("Do not resize images" buckets or a
fixed width x height) are part of the key.

The key: sha256 of (the image file's bytes, the size setting, the VAE identity, the cache format). The VAE
identity is its encoder's config, the dtype it encodes in, and a fingerprint of its encoder weights, so a
fine-tuned decoder (the usual "VAE swap") keeps the latents and a different encoder does not. A changed image,
size or encoder gives a new key: only that image is encoded again.

Files are ``<folder>/<vae id>/<key>.safetensors``, written atomically. A file is used only when it reads
cleanly and its metadata names the very key asked for, with float32 tensors of the declared, consistent shape
and finite values; anything else (truncated, foreign, tampered with) is ignored and overwritten by a fresh
encoding.
"""
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from common.files import atomic_write

CACHE_FORMAT = "1"  # bump when the way images become latents changes (fit, normalisation, scaling)
SUBFOLDER = "latent_cache"
TENSOR_NAMES = ("mean", "std")


@dataclass
class CachedLatent:
    """One image's encoding: posterior mean and std [C, h, w] (scaled), the alpha weight [h, w] or None."""

    mean: torch.Tensor
    std: torch.Tensor
    alpha_weight: torch.Tensor | None = None
    original_size: tuple = (0, 0)  # (height, width) of the image file before resizing (SDXL conditions on it)


def default_cache_dir(log_dir: str) -> Path | None:
    """``<log dir>/latent_cache``, or None (cache in memory only) when there is no log directory."""
    return Path(log_dir) / SUBFOLDER if str(log_dir or "").strip() else None


def file_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def vae_identity(vae: torch.nn.Module) -> str:
    """A short id of what turns pixels into latents: the encoder's config and dtype and a fingerprint of
    every encoder weight (its shape, its float64 sum and a strided sample of its values). Cheap (milliseconds
    for SD's VAE) and it changes whenever the encoder does."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}".encode())
    config = {k: v for k, v in dict(vae.config).items() if not k.startswith("_")}
    digest.update(json.dumps(config, sort_keys=True, default=str).encode())
    for name, tensor in vae.state_dict().items():
        if name.startswith("decoder.") or name.startswith("post_quant_conv."):
            continue
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().cpu()
        digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}{flat.double().sum().item():.10e}".encode())
        digest.update(sample.numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentCache:
    """Latents by key in ``folder/<vae id>/``; with ``folder=None`` nothing is read or written."""

    def __init__(self, folder, vae_id: str):
        self.vae_id = vae_id
        self.folder = Path(folder) / vae_id if folder is not None else None

    @staticmethod
    def key(content_digest: str, size_setting: str, vae_id: str) -> str:
        text = f"{CACHE_FORMAT}|{content_digest}|{size_setting}|{vae_id}"
        return hashlib.sha256(text.encode()).hexdigest()[:40]

    def path(self, key: str) -> Path | None:
        return self.folder / f"{key}.safetensors" if self.folder is not None else None

    def load(self, key: str, channels: int, expected_hw: tuple | None = None) -> CachedLatent | None:
        """The entry stored under `key`, or None when there is none or it cannot be trusted."""
        path = self.path(key)
        if path is None or not path.is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception:  # noqa: BLE001 - any unreadable file is simply not a cache hit
            return None
        if meta.get("key") != key or meta.get("format") != CACHE_FORMAT or meta.get("vae") != self.vae_id:
            return None
        try:
            shape = tuple(int(v) for v in json.loads(meta.get("shape", "null")))
        except (TypeError, ValueError):
            return None
        if len(shape) != 3 or shape[0] != channels or (expected_hw is not None and shape[1:] != tuple(expected_hw)):
            return None
        try:
            original_size = tuple(int(v) for v in json.loads(meta.get("original_size", "[0, 0]")))
        except (TypeError, ValueError):
            return None
        if len(original_size) != 2 or min(original_size) < 0:
            return None
        if set(tensors) - {*TENSOR_NAMES, "alpha_weight"} or not all(name in tensors for name in TENSOR_NAMES):
            return None
        for name, tensor in tensors.items():
            wanted = shape if name in TENSOR_NAMES else shape[1:]
            if tensor.dtype != torch.float32 or tuple(tensor.shape) != wanted or not torch.isfinite(tensor).all():
                return None
        return CachedLatent(tensors["mean"], tensors["std"], tensors.get("alpha_weight"), original_size)

    def store(self, key: str, entry: CachedLatent, source_name: str = ""):
        """Write the entry atomically; a folder that cannot be written leaves the run uncached, not failed."""
        path = self.path(key)
        if path is None:
            return
        from safetensors.torch import save_file

        tensors = {"mean": entry.mean.float().contiguous(), "std": entry.std.float().contiguous()}
        if entry.alpha_weight is not None:
            tensors["alpha_weight"] = entry.alpha_weight.float().contiguous()
        meta = {"key": key, "format": CACHE_FORMAT, "vae": self.vae_id, "source": source_name,
                "shape": json.dumps(list(entry.mean.shape)), "original_size": json.dumps(list(entry.original_size))}
        try:
            atomic_write(path, lambda temp: save_file(tensors, temp, metadata=meta))
        except OSError:
            pass

    def file_count(self) -> int:
        if self.folder is None or not self.folder.is_dir():
            return 0
        return sum(1 for name in os.listdir(self.folder) if name.endswith(".safetensors"))
