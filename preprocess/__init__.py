"""Preprocess images for training (the Train tab's "Preprocess images"): split, focal crop, auto-sized crop,
flip, captions. The engine never imports gradio; `python -m preprocess` is its command line."""
from .pipeline import PreprocessConfig, PreprocessResult, SkippedFile, run_preprocess

__all__ = ["PreprocessConfig", "PreprocessResult", "SkippedFile", "run_preprocess"]
