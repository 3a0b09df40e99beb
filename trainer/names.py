"""Names of embeddings and hypernetworks as files: how long they may be, and where one already is.

A name exists once anywhere under its folder (subfolders included): the lists find files recursively, so a
second file of the same name in another subfolder would shadow the first, and training would rewrite whichever
the list picked.
"""
import os
from pathlib import Path

from common.errors import UserError

# File names may have 255 bytes; the longest thing we add to a name is ".safetensors.optim.tmp" plus the
# random part of a temporary file, so names stay well below.
MAX_NAME_BYTES = 200


def check_name_length(name: str, what: str) -> None:
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise UserError(f"The {what} name is too long ({size} bytes in a file name; at most {MAX_NAME_BYTES} "
                        "are allowed), please shorten it.")


def walk_files(root: Path):
    """Files under ``root``, recursively, in sorted order, following symlinked folders (each real folder once)."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        for name in sorted(files):
            yield Path(folder) / name


def find_named_file(folder, name: str, extensions) -> Path | None:
    """The first file under `folder` (recursively, sorted) whose stem is `name` and whose extension is one of
    `extensions` (lower case, with the dot), or None."""
    root = Path(folder)
    if not root.is_dir():
        return None
    return next((path for path in walk_files(root) if path.stem == name and path.suffix.lower() in extensions),
                None)
