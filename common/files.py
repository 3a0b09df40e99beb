"""Atomic file writes: a temp file in the same folder, then os.replace, so a crash never leaves half a file.

The file ends with the mode a plain `open(path, "w")` would give it: an existing file keeps its mode, a new one
gets 0666 less the process umask (0644 under the usual umask 022) - not the 0600 of the temporary file.
"""
import os
import stat
import tempfile
import threading
from pathlib import Path
from typing import Callable

_UMASK_LOCK = threading.Lock()


def current_umask() -> int:
    """The process umask, read without changing it where the system tells (Linux /proc); elsewhere set and
    restored at once under a lock."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    with _UMASK_LOCK:
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def target_mode(path: Path) -> int:
    """The permission bits `path` should have after a write: its own when it exists, else 0666 & ~umask."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return 0o666 & ~current_umask()


def atomic_write(path: str | os.PathLike, write: Callable[[str], None], exclusive: bool = False) -> Path:
    """Call ``write(temp_path)`` for a temporary file beside ``path``, then move it over ``path`` atomically.

    ``exclusive``: never replace an existing file - raise FileExistsError instead (the check and the move are
    one step, a hard link, so two writers racing for one name cannot both win)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(temp)
        os.chmod(temp, target_mode(path))
        if exclusive:
            _link_new(temp, path)
        else:
            os.replace(temp, path)
    except BaseException:
        if os.path.exists(temp):
            os.unlink(temp)
        raise
    return path


def _link_new(temp: str, path: Path) -> None:
    """Give ``temp`` the name ``path`` only if nothing has that name (FileExistsError otherwise)."""
    try:
        os.link(temp, path)
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: check, then move (a narrow race remains)
        if path.exists():
            raise FileExistsError(f"{path} exists") from None
        os.replace(temp, path)
        return
    os.unlink(temp)


def atomic_write_bytes(path, data: bytes, exclusive: bool = False) -> Path:
    return atomic_write(path, lambda temp: Path(temp).write_bytes(data), exclusive=exclusive)


def atomic_write_text(path, text: str, exclusive: bool = False) -> Path:
    """`text` as UTF-8 (no BOM)."""
    return atomic_write_bytes(path, text.encode("utf-8"), exclusive=exclusive)


def save_png(image, path, infotext: str | None = None, exclusive: bool = False) -> Path:
    """`image` (a PIL image) as a PNG, atomically; `infotext` goes into its `parameters` text chunk, where the
    reference webui keeps an image's generation settings. `exclusive`: FileExistsError rather than replacing."""
    from PIL.PngImagePlugin import PngInfo

    info = None
    if infotext is not None:
        info = PngInfo()
        info.add_text("parameters", infotext)  # tEXt, or iTXt when the text is not Latin-1
    return atomic_write(path, lambda temp: image.save(temp, format="PNG", pnginfo=info, compress_level=4),
                        exclusive=exclusive)
