"""Captions: BLIP captioning and the "Existing Caption txt Action".

BLIP runs through transformers (`BlipForConditionalGeneration` + `BlipProcessor`) from a local folder: the
`--blip-model` path, else `models/BLIP`, else a BLIP captioning model already in the Hugging Face cache
(looked up offline, never downloaded). The model is loaded once per run and released afterwards.
transformers is imported only when captioning is asked for.
"""
from __future__ import annotations

import gc
from pathlib import Path

from PIL import Image

from common.errors import UserError, first_line

CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")
DEFAULT_BLIP_DIR = Path("models") / "BLIP"
HF_CACHE_CANDIDATES = ("Salesforce/blip-image-captioning-large", "Salesforce/blip-image-captioning-base")


def combine_caption(action: str, existing: str | None, generated: str | None) -> str:
    """The caption written next to an output: prepend = "existing generated", append = "generated existing",
    copy = existing only (generated when there is no existing caption), ignore = generated only."""
    existing = (existing or "").strip()
    generated = (generated or "").strip()
    if action == "ignore" or not existing:
        return generated
    if action == "copy":
        return existing
    if action == "prepend":
        return f"{existing} {generated}".strip()
    if action == "append":
        return f"{generated} {existing}".strip()
    raise ValueError(f"unknown caption action {action!r}")


def resolve_blip_model(path: str | Path | None, default_dir: str | Path = DEFAULT_BLIP_DIR) -> str:
    """The folder (or cached repo id) to load BLIP from: `path`, else `default_dir` (models/BLIP of the data
    folder), else the Hugging Face cache; UserError when none is available."""
    if path:
        folder = Path(path).expanduser()
        if not folder.is_dir():
            raise UserError(f"The BLIP model folder {folder} does not exist.")
        if not (folder / "config.json").is_file():
            raise UserError(f"The BLIP model folder {folder} has no config.json: it should be a transformers "
                            "BLIP captioning model saved with save_pretrained.")
        return str(folder)
    default_dir = Path(default_dir)
    if (default_dir / "config.json").is_file():
        return str(default_dir)
    for repo in HF_CACHE_CANDIDATES:
        if _in_hf_cache(repo):
            return repo
    raise UserError(f"No BLIP captioning model is available: put a transformers BLIP captioning model (such as "
                    f"Salesforce/blip-image-captioning-base) in {default_dir.resolve()} (nothing is downloaded).",
                    control="blip_model")


def _in_hf_cache(repo: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - comes with transformers
        return False
    try:
        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # noqa: BLE001 - any cache problem means "not available"
        return False
    return isinstance(found, str) and Path(found).is_file()


class BlipCaptioner:
    """A loaded BLIP captioner. Use as a context manager, or call close() to free the model."""

    def __init__(self, model: str | Path | None = None, *, beams: int = 1, min_length: int = 24,
                 max_length: int = 48, device: str | None = None, default_dir: str | Path = DEFAULT_BLIP_DIR):
        source = resolve_blip_model(model, default_dir)
        try:
            import torch
            from transformers import BlipForConditionalGeneration, BlipProcessor
        except ImportError as exc:  # pragma: no cover - both are dependencies
            raise UserError(f"BLIP captioning needs torch and transformers ({exc}).") from None
        self._torch = torch
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.dtype = torch.float16 if self.device.startswith("cuda") else torch.float32
        self.beams, self.min_length, self.max_length = beams, min_length, max_length
        local = not Path(source).is_dir()
        try:
            self.processor = BlipProcessor.from_pretrained(source, local_files_only=local)
            self.model = BlipForConditionalGeneration.from_pretrained(source, local_files_only=local)
        except Exception as exc:  # noqa: BLE001 - a broken folder is the user's input
            raise UserError(f"The BLIP model {source} could not be loaded: {first_line(exc)}.") from None
        self.model.to(self.device, self.dtype).eval()
        self.source = source

    def __call__(self, image: Image.Image) -> str:
        torch = self._torch
        inputs = self.processor(images=image.convert("RGB"), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, self.dtype)
        with torch.inference_mode():
            tokens = self.model.generate(pixel_values=pixel_values, num_beams=self.beams,
                                         min_length=self.min_length, max_length=self.max_length)
        return self.processor.decode(tokens[0], skip_special_tokens=True).strip()

    def close(self) -> None:
        for name in ("model", "processor"):
            if hasattr(self, name):
                delattr(self, name)
        gc.collect()
        torch = getattr(self, "_torch", None)
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> "BlipCaptioner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
