"""One background job at a time (training or preprocessing), its interrupt flag and what it reported.

The engine reports through `progress(event)`; the job keeps what a page needs to redraw itself at any
moment (so a reloaded page re-attaches): loss history, previews, the latest numbers, messages, the result.
"""
import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field

from common.errors import UserError

MAX_PREVIEWS = 16  # the newest previews the page shows; every file stays in the log folder


class JobBusy(UserError):
    """A job was asked to start while another one runs (the HTTP API answers 409 Conflict)."""


@dataclass
class Job:
    id: int
    kind: str  # "train-embedding", "preprocess", ...
    title: str
    started: float = field(default_factory=time.time)
    state: str = "running"  # running | finished | interrupted | failed | nan
    stop: threading.Event = field(default_factory=threading.Event)
    losses: list = field(default_factory=list)  # [(step, loss)]
    validations: list = field(default_factory=list)  # [(step, validation loss)]
    validation: dict = field(default_factory=dict)  # the last "validation" event (loss, best, vector norms)
    previews: list = field(default_factory=list)  # [(PIL image, caption)], oldest first
    latest: dict = field(default_factory=dict)  # the last "step"/"progress" event
    messages: list = field(default_factory=list)
    saved_files: list = field(default_factory=list)
    last_prompt: str = ""
    preview_prompt: str = ""
    result: object = None
    message: str = ""
    error: str = ""
    error_control: str | None = None  # the setting that would have avoided the error (UserError.control)
    warnings: list = field(default_factory=list)  # e.g. the dataset's skipped files, by name and reason
    settings: object = None  # what it was started with (TrainConfig, PreprocessConfig): a page re-fills its form
    finished_at: float | None = None
    bad_input: bool = False  # it ended with a UserError raised before any work (a sentence about the input)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        return self.state == "running"

    def wait(self, timeout=None) -> bool:
        """Block until this job has ended; False when `timeout` seconds passed first."""
        return self.done.wait(timeout)

    def report(self, event: dict):
        """The engine's progress callback."""
        kind = event.get("type")
        with self.lock:
            if kind == "step":
                self.latest = event
                self.losses.append((event["step"], event["loss"]))
                self.last_prompt = event.get("prompt", self.last_prompt)
            elif kind == "start":
                self.latest = {**self.latest, **{k: v for k, v in event.items() if k != "history"}}
                # a resumed run: the earlier sessions' loss comes first
                self.losses[:0] = [tuple(point) for point in event.get("history", [])]
            elif kind in ("progress", "dataset"):
                self.latest = {**self.latest, **event}
            elif kind == "validation":
                self.validations.append((event["step"], event["val_loss"]))
                self.validation = event
            elif kind == "preview":
                self.previews.append((event["image"], f"step {event['step']}"))
                del self.previews[:-MAX_PREVIEWS]
                self.preview_prompt = event.get("prompt", "")
                self.saved_files = event.get("files", []) + self.saved_files[:8]
            elif kind == "saved":
                self.saved_files = [event["path"]] + self.saved_files[:8]
            elif kind == "message":
                self.messages.append(event["text"])
            elif kind == "end":
                self.message = event.get("message", "")

    def snapshot(self) -> dict:
        """A consistent copy for a page to draw."""
        with self.lock:
            return {
                "id": self.id, "kind": self.kind, "title": self.title, "state": self.state,
                "started": self.started, "finished_at": self.finished_at, "losses": list(self.losses),
                "validations": list(self.validations), "validation": dict(self.validation),
                "previews": list(self.previews), "latest": dict(self.latest), "messages": list(self.messages),
                "saved_files": list(self.saved_files), "last_prompt": self.last_prompt,
                "preview_prompt": self.preview_prompt, "message": self.message, "error": self.error,
                "warnings": list(self.warnings), "error_control": self.error_control,
            }


class JobRunner:
    """Starts jobs in a daemon thread, refuses a second one while one runs, remembers the last one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.current: Job | None = None

    def start(self, kind: str, title: str, work, settings=None) -> Job:
        """Run `work(job)` in the background; it returns a result with `.status` and `.message` (or raises).
        `settings`: what the job was started with, kept for pages that re-attach."""
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy(f"Another job is running ({self.current.title}); wait for it or press Interrupt.")
            job = Job(next(self._ids), kind, title, settings=settings)
            self.current = job
        threading.Thread(target=self._run, args=(job, work), name=f"job-{job.id}", daemon=True).start()
        return job

    def _run(self, job: Job, work):
        result, error, warnings, control = None, "", [], None
        try:
            result = work(job)
            state = getattr(result, "status", "finished")
            message = getattr(result, "message", "") or job.message
            warnings = list(getattr(result, "warnings", None) or [])
            if state in ("failed", "nan"):
                error = message
        except UserError as e:
            state, error, control = "failed", str(e), e.control
            message = error
            job.bad_input = True
        except Exception as e:  # noqa: BLE001 - a job never takes the app down; the page shows what happened
            traceback.print_exc()
            state = "failed"
            error = message = f"{job.title} failed: {e.__class__.__name__}: {e}"
        with job.lock:  # the state, its reason and the warnings change together: a page never sees one alone
            job.result, job.message, job.error, job.warnings = result, message, error, warnings
            job.error_control = control
            job.state = state
            job.finished_at = time.time()
        job.done.set()

    def interrupt(self) -> bool:
        job = self.current
        if job is None or not job.running:
            return False
        job.stop.set()
        return True

    def wait(self, timeout=None) -> Job | None:
        """Block until the current job ends (tests and the CLI)."""
        deadline = None if timeout is None else time.time() + timeout
        while self.current is not None and self.current.running:
            if deadline is not None and time.time() > deadline:
                break
            time.sleep(0.05)
        return self.current
