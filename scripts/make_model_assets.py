"""Generate the offline model assets the app ships in trainer/assets/.

* clip_tokenizer/: the real 49,408-token CLIP BPE vocabulary (vocab.json + merges.txt), converted from
  the MIT-licensed `bpe_simple_vocab_16e6.txt.gz` inside the clip-anytorch wheel on PyPI.
* openclip_tokenizer/: the same vocabulary padding with "!" (id 0): SD 2.x's tokenizer, and SDXL's second
  one (`tokenizer_2`, for the OpenCLIP ViT-bigG encoder).
* configs/<family>/: config-only diffusers folders (no weights) for SD 1.x, SD 2.x and SDXL base, so that a
  single-file checkpoint can be loaded with `from_single_file(..., config=folder)` and no network.

Usage:  python scripts/make_model_assets.py [--wheel path/to/clip_anytorch-2.6.0-py3-none-any.whl]
Without --wheel the wheel is fetched with `pip download` (the only step here that needs a registry).
"""
import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

ASSETS = Path(__file__).resolve().parent.parent / "trainer" / "assets"
WHEEL = "clip-anytorch==2.6.0"
VOCAB_MEMBER = "clip/bpe_simple_vocab_16e6.txt.gz"


def byte_alphabet():
    """The reversible byte -> printable character table that CLIP's BPE works over."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return [chr(c) for c in chars]


def clip_vocab_and_merges(bpe_text: str):
    lines = bpe_text.split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = byte_alphabet()
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {t: i for i, t in enumerate(tokens)}, merges


def write_json(path: Path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def write_tokenizer(folder: Path, bpe_text: str, pad_token: str):
    vocab, merges = clip_vocab_and_merges(bpe_text)
    assert len(vocab) == 49408, len(vocab)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "vocab.json", vocab)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    write_json(folder / "special_tokens_map.json", {
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token,
    })
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True,
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>", "pad_token": pad_token, "errors": "replace",
        "add_prefix_space": False, "clean_up_tokenization_spaces": True,
    })


def fetch_wheel() -> Path:
    out = Path(tempfile.mkdtemp())
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(out), WHEEL], check=True)
    return next(out.glob("*.whl"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheel", type=Path, help="a local clip-anytorch 2.6.0 wheel")
    args = parser.parse_args()
    wheel = args.wheel or fetch_wheel()
    with zipfile.ZipFile(wheel) as z:
        bpe_text = gzip.decompress(z.read(VOCAB_MEMBER)).decode("utf-8")
    write_tokenizer(ASSETS / "clip_tokenizer", bpe_text, pad_token="<|endoftext|>")
    # SD 2.x (OpenCLIP) pads with "!" (id 0) instead of the end token.
    write_tokenizer(ASSETS / "openclip_tokenizer", bpe_text, pad_token="!")
    from model_configs import write_config_folders  # noqa: E402  (beside this script)

    write_config_folders(ASSETS / "configs")
    print(f"wrote {ASSETS}")


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
