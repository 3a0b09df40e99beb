"""One background job at a time (training or preprocessing), its interrupt flag and what it reported.

The engine reports through `progress(event)` with the `common.events` vocabulary; the job keeps what a page
needs to redraw itself at any moment (so a reloaded page re-attaches): loss history, previews, the latest
numbers, messages, warnings, the result.
"""
import itertools
import threading
import time
import traceback
from dataclasses import dataclass, field

from common import events
from common.errors import UserError
from common.events import Status

MAX_PREVIEWS = 16  # the newest previews the page shows; every file stays in the log folder


class JobBusy(UserError):
    """A job was asked to start while another one runs (the HTTP API answers 409 Conflict)."""


@dataclass
class Job:
    id: int
    kind: str  # "train-embedding", "preprocess", ...
    title: str
    started: float = field(default_factory=time.time)
    state: Status = Status.RUNNING
    stop: threading.Event = field(default_factory=threading.Event)
    max_steps: int | None = None  # known from the settings, before the step loop starts
    start_step: int | None = None  # the step the loop started from (above 0 when resumed); None before it starts
    step: events.Step | None = None  # the last optimizer step
    progress: events.Progress | None = None  # items counted before the step loop (dataset) or instead (preprocess)
    losses: list = field(default_factory=list)  # [(step, loss)]
    validations: list = field(default_factory=list)  # [(step, validation loss)]
    validation: events.Validated | None = None  # the last check (loss, best, vector norms)
    previews: list = field(default_factory=list)  # [(PIL image, caption)], oldest first
    messages: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # e.g. the dataset's skipped files, by name and reason
    saved_files: list = field(default_factory=list)
    last_prompt: str = ""
    preview_prompt: str = ""
    result: object = None
    message: str = ""
    error: str = ""
    error_control: str | None = None  # the setting that would have avoided the error (UserError.control)
    settings: object = None  # what it was started with (TrainConfig, PreprocessConfig): a page re-fills its form
    finished_at: float | None = None
    bad_input: bool = False  # it ended with a UserError raised before any work (a sentence about the input)
    done: threading.Event = field(default_factory=threading.Event, repr=False)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def running(self) -> bool:
        return self.state == Status.RUNNING

    def wait(self, timeout=None) -> bool:
        """Block until this job has ended; False when `timeout` seconds passed first."""
        return self.done.wait(timeout)

    def report(self, event: events.Event):
        """The engine's progress callback."""
        with self.lock:
            match event:
                case events.Step():
                    self.step, self.max_steps = event, event.max_steps
                    self.losses.append((event.step, event.loss))
                    self.last_prompt = event.prompt
                case events.Started():
                    self.start_step, self.max_steps, self.progress = event.step, event.max_steps, None
                    self.losses[:0] = [tuple(point) for point in event.history]  # a resumed run's earlier loss
                    self.validations[:0] = [tuple(point) for point in event.validations]
                case events.Progress():
                    self.progress = event
                case events.Validated():
                    self.validations.append((event.step, event.val_loss))
                    self.validation = event
                case events.Preview():
                    self.previews.append((event.image, f"step {event.step}"))
                    del self.previews[:-MAX_PREVIEWS]
                    self.preview_prompt = event.prompt
                    self.saved_files = list(event.files) + self.saved_files[:8]
                case events.Saved():
                    self.saved_files = [event.path] + self.saved_files[:8]
                case events.Message():
                    self.messages.append(event.text)
                case events.Warning():  # beside the result at the end; among the messages meanwhile
                    self.warnings.append(event.text)
                    self.messages.append("Warning: " + event.text)
                case events.Ended():
                    self.message = event.message

    def snapshot(self) -> dict:
        """A consistent copy for a page to draw."""
        with self.lock:
            return {
                "id": self.id, "kind": self.kind, "title": self.title, "state": self.state,
                "started": self.started, "finished_at": self.finished_at, "max_steps": self.max_steps,
                "start_step": self.start_step, "step": self.step, "progress": self.progress,
                "losses": list(self.losses), "validations": list(self.validations), "validation": self.validation,
                "previews": list(self.previews), "messages": list(self.messages), "warnings": list(self.warnings),
                "saved_files": list(self.saved_files), "last_prompt": self.last_prompt,
                "preview_prompt": self.preview_prompt, "message": self.message, "error": self.error,
                "error_control": self.error_control,
            }


class JobRunner:
    """Starts jobs in a daemon thread, refuses a second one while one runs, remembers the last one."""

    def __init__(self):
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.current: Job | None = None

    def start(self, kind: str, title: str, work, settings=None, max_steps: int | None = None) -> Job:
        """Run `work(job)` in the background; it returns a result with `.status` and `.message` (or raises) and
        reports its warnings as events. `settings`: what the job was started with, kept for pages that re-attach;
        `max_steps`: a training job's, known before its dataset is ready."""
        with self._lock:
            if self.current is not None and self.current.running:
                raise JobBusy(f"Another job is running ({self.current.title}); wait for it or press Interrupt.")
            job = Job(next(self._ids), kind, title, settings=settings, max_steps=max_steps)
            self.current = job
        threading.Thread(target=self._run, args=(job, work), name=f"job-{job.id}", daemon=True).start()
        return job

    def _run(self, job: Job, work):
        result, error, control = None, "", None
        try:
            result = work(job)
            state = Status(getattr(result, "status", Status.FINISHED))
            message = getattr(result, "message", "") or job.message
            if state in (Status.FAILED, Status.NAN):
                error = message
        except UserError as e:
            state, error, control = Status.FAILED, str(e), e.control
            message = error
            job.bad_input = True
        except Exception as e:  # noqa: BLE001 - a job never takes the app down; the page shows what happened
            traceback.print_exc()
            state = Status.FAILED
            error = message = f"{job.title} failed: {e.__class__.__name__}: {e}"
        with job.lock:  # the state and its reason change together: a page never sees one alone
            job.result, job.message, job.error = result, message, error
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
