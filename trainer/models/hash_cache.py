"""Checkpoint sha256 hashes remembered between runs, so loading a model again does not re-read gigabytes.

The hashes live in ``.sha256-cache.json`` beside the hashed file (the models folder), keyed by the file's
absolute path and checked against its size and modification time: a replaced or rewritten file is hashed
again. The JSON is written atomically; an unreadable one is ignored, a folder that cannot be written just
means hashing every time.
"""
import hashlib
import json
import os
from pathlib import Path

from common.files import atomic_write_text

CACHE_NAME = ".sha256-cache.json"


def sha256_of_file(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _read_cache(cache_file: Path) -> dict:
    try:
        data = json.loads(cache_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def cached_sha256(path) -> str:
    """The file's full sha256 (hex), from the cache when its size and mtime are unchanged."""
    path = Path(path).resolve()
    stat = path.stat()
    cache_file = path.parent / CACHE_NAME
    entries = _read_cache(cache_file)
    record = entries.get(str(path))
    if (isinstance(record, dict) and record.get("size") == stat.st_size
            and record.get("mtime_ns") == stat.st_mtime_ns and isinstance(record.get("sha256"), str)):
        return record["sha256"]
    digest = sha256_of_file(path)
    entries = _read_cache(cache_file)  # re-read: another process may have added files meanwhile
    entries[str(path)] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": digest}
    entries = {k: v for k, v in entries.items() if os.path.exists(k)}
    try:
        atomic_write_text(cache_file, json.dumps(entries, indent=1, sort_keys=True))
    except OSError:
        pass
    return digest
