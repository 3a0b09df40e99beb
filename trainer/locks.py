"""A lock file per embedding or hypernetwork being trained, so nothing else writes it meanwhile.

`<folder>/.<name>.training.lock` holds the trainer's pid, host and process start time. It is created with
O_EXCL, so two trainers (two CLI processes, or the app and a CLI) cannot both hold it; Create with Overwrite
checks it too. A lock whose process is gone (a crash, `kill -9`, a reboot) is stale and is taken over: the
pid no longer runs, or runs but started at another time (the pid was reused).
"""
import json
import os
import socket
import time
from pathlib import Path

from common.errors import UserError
from trainer.names import check_name_length

UNREADABLE_GRACE_SECONDS = 30  # a lock file still being written by its owner is empty for a moment


def lock_path(folder, name: str) -> Path:
    return Path(folder) / f".{name}.training.lock"


def _process_start(pid: int):
    """The start time of process `pid` in clock ticks since boot (Linux), or None when unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            text = handle.read()
        return int(text[text.rindex(")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (OSError, OverflowError, ValueError):
        return False
    return True


def read_lock(folder, name: str) -> dict | None:
    """The owner of a live lock ({"pid", "host", "what", ...}), or None when there is none or it is stale."""
    path = lock_path(folder, name)
    try:
        text = path.read_text(encoding="utf-8")
        age = time.time() - path.stat().st_mtime
    except (OSError, ValueError):
        return None
    try:
        owner = json.loads(text)
        pid = int(owner["pid"])
    except (ValueError, KeyError, TypeError):
        return {"pid": None, "host": "?"} if age < UNREADABLE_GRACE_SECONDS else None
    if owner.get("host") != socket.gethostname():
        return owner  # another machine's process: we cannot tell, so it holds
    if not _pid_alive(pid):
        return None
    started = owner.get("process_start")
    if started is not None and _process_start(pid) not in (None, started):
        return None  # the pid now belongs to another process
    return owner


def describe(owner: dict) -> str:
    if owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
        return "by this app"
    return f"by process {owner.get('pid')} on {owner.get('host')}"


def refuse_if_locked(folder, name: str, what: str, action: str) -> None:
    """UserError when `name` is being trained: `action` is what was refused ("overwritten", ...)."""
    owner = read_lock(folder, name)
    if owner is not None:
        raise UserError(f"The {what} '{name}' is being trained {describe(owner)}, so it cannot be {action} now; "
                        "wait for the training to end or interrupt it.")


class TrainingLock:
    """`with TrainingLock(folder, name, "embedding"):` - held for the whole run; refused (UserError) when another
    live trainer holds it. A stale lock is removed and taken."""

    def __init__(self, folder, name: str, what: str):
        self.folder, self.name, self.what = Path(folder), name, what
        self.path = lock_path(folder, name)
        self.held = False

    def __enter__(self):
        check_name_length(self.name, self.what)
        if self.folder.exists() and not self.folder.is_dir():
            raise UserError(f"The {self.what} folder {self.folder} is a file, not a folder.")
        if not self.folder.is_dir():
            return self  # nothing there to protect; the trainer says it found nothing
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "what": self.what, "name": self.name,
                 "process_start": _process_start(os.getpid()), "started": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                holder = read_lock(self.folder, self.name)
                if holder is not None:
                    raise UserError(f"The {self.what} '{self.name}' is already being trained {describe(holder)}; "
                                    "wait for that training to end or interrupt it.") from None
                try:
                    self.path.unlink()  # stale: its trainer is gone
                except FileNotFoundError:
                    pass
                continue
            except OSError as e:
                raise UserError(f"Cannot create the training lock {self.path}: {e.strerror or e}.") from None
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                json.dump(owner, handle)
            self.held = True
            return self
        raise UserError(f"Cannot take the training lock {self.path}; another trainer keeps taking it.")

    def __exit__(self, *exc):
        if self.held:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
            self.held = False
        return False


def training_lock(folder, name: str, what: str, accelerator=None):
    """The lock a training run holds; only the main process of a data-parallel run takes it."""
    import contextlib

    if not name or (accelerator is not None and not accelerator.is_main_process):
        return contextlib.nullcontext()
    return TrainingLock(folder, name, what)
