"""The CLIP tokenizers that ship with the app (the real 49,408-token BPE vocabulary; no download)."""
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "assets"
TOKENIZERS = {"clip": ASSETS / "clip_tokenizer", "openclip": ASSETS / "openclip_tokenizer"}


def load_tokenizer(folder: Path = TOKENIZERS["clip"]):
    """A CLIP tokenizer from a folder, always 77 tokens long, never from the hub."""
    from transformers import CLIPTokenizer

    # transformers 5: from the folder (vocab_file= silently yields a 3-token vocabulary).
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=77, local_files_only=True)
