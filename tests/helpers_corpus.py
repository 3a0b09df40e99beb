"""The bad-input corpus's tools: a snapshot of a folder tree (bytes and modes) to prove nothing changed."""
import hashlib
import os
import stat
from pathlib import Path


def snapshot(root: Path) -> dict:
    """{relative path: (sha256 of the bytes, permission bits)} of every file under `root` (symlinks not
    followed into), and {relative folder: "dir"} for folders, so added, removed or changed files all show."""
    out = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not os.path.islink(os.path.join(folder, d))]
        for name in dirs:
            out[os.path.relpath(os.path.join(folder, name), root)] = "dir"
        for name in files:
            path = Path(folder) / name
            if path.is_symlink():
                continue
            out[os.path.relpath(path, root)] = (hashlib.sha256(path.read_bytes()).hexdigest(),
                                                stat.S_IMODE(path.stat().st_mode))
    return out


def changes(before: dict, after: dict) -> dict:
    """What differs between two snapshots: {path: (before, after)}."""
    return {key: (before.get(key), after.get(key)) for key in before.keys() | after.keys()
            if before.get(key) != after.get(key)}


def one_sentence(err: str) -> str:
    """The message of a refused command: exactly one line, no traceback."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]
