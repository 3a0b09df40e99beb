"""What a running job reports, and how it ended: the one vocabulary of the trainers, preprocessing, the job the
page and the HTTP API read, and the CLI printer.

The engine calls `progress(event)` with one of the event classes below; a consumer matches on the class
(`match event: case events.Step(): ...`). `Status` is how a job stands or ended. Plain data, no behaviour: this
module imports nothing from the project, so `trainer` and `preprocess` both use it.
"""
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Callable


class Status(StrEnum):
    """How a job stands (`RUNNING`) or how it ended. A StrEnum: it compares equal to, and prints as, its value."""

    RUNNING = "running"
    FINISHED = "finished"
    INTERRUPTED = "interrupted"
    FAILED = "failed"
    NAN = "nan"  # training stopped on a non-finite loss; the last finite state was kept


@dataclass(frozen=True)
class Progress:
    """Work counted in items before (or instead of) optimizer steps: the dataset's images being encoded for
    training, or preprocessing's source files. `message` says what is being done, when there is something to say."""

    done: int
    total: int
    message: str = ""


@dataclass(frozen=True)
class Started:
    """The step loop begins at `step` (above 0 when a run resumes). `history` and `validations`: the earlier
    sessions' loss and validation loss, [(step, loss)], for a resumed run's chart; `epoch_len`: optimizer steps
    per pass over the dataset."""

    step: int
    max_steps: int
    dataset_size: int
    epoch_len: int
    history: tuple = ()
    validations: tuple = ()


@dataclass(frozen=True)
class Step:
    """One optimizer step done: its number, loss, learning rate, epoch position, the first prompt, the speed."""

    step: int
    max_steps: int
    loss: float
    lr: float
    epoch: int
    epoch_step: int  # 0-based step within the epoch
    epoch_len: int
    prompt: str
    it_per_s: float


@dataclass(frozen=True)
class Validated:
    """The validation loss at `step` (trainer.training.validation), the best so far, and the health columns
    (an embedding's vector norms, a hypernetwork's weight norm) as validation.csv has them."""

    step: int
    val_loss: float
    best_step: int
    best_val_loss: float
    improved: bool
    seconds: float
    health: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Preview:
    """A preview image rendered at `step` (a PIL image), with its prompt and seed, and the files written."""

    step: int
    image: Any
    prompt: str
    seed: int
    files: tuple = ()


@dataclass(frozen=True)
class Sampled:
    """txt2img finished sampling step `step` of `total` for image `image` of `images` (1-based)."""

    step: int
    total: int
    image: int
    images: int


@dataclass(frozen=True)
class Saved:
    """A copy of what trains was written at `step`."""

    path: str
    step: int


@dataclass(frozen=True)
class Message:
    """A line worth telling the user (what is being prepared, what was resumed...)."""

    text: str


@dataclass(frozen=True)
class Warning:  # noqa: A001 - used as `events.Warning`
    """Something the user should know that did not stop the work: a skipped file, a template without [name],
    vectors growing too long. Shown beside the result, and printed by the CLI, as "Warning: <text>"."""

    text: str


@dataclass(frozen=True)
class Ended:
    """The run is over: how (`status`), its closing sentence, the last step done."""

    status: Status
    message: str
    step: int


Event = Progress | Started | Step | Validated | Preview | Sampled | Saved | Message | Warning | Ended
Report = Callable[[Event], None]


def ignore(event: Event) -> None:
    """The `progress` of a caller that wants no events."""
