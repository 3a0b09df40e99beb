"""What a training run returns, and the sentence that closes it."""
from dataclasses import dataclass

from common.events import Status


@dataclass
class TrainResult:
    status: Status
    step: int
    message: str
    trained_file: str | None = None  # the embedding or hypernetwork file trained (None on non-main processes)
    log_dir: str | None = None


def closing_sentence(status: Status, step: int, saved: str, error=None, what: str = "embedding",
                     stopped_early: str | None = None) -> str:
    """The closing sentence of a run, true to what happened (`saved` says what was saved, or that nothing was;
    `what` names the thing trained; `stopped_early` why validation ended a run early)."""
    if status == Status.FINISHED and stopped_early:
        return f"Training stopped early at {step} steps: {stopped_early}. {saved}"
    if status == Status.FINISHED:
        return f"Training finished at {step} steps. {saved}"
    if status == Status.INTERRUPTED:
        return f"Training interrupted at {step} steps. {saved}"
    if status == Status.NAN:
        return (f"Training stopped at step {step + 1}: the loss became NaN or infinite (try a lower "
                f"learning rate). The last finite {what}, from step {step}, was kept. {saved}")
    return f"Training failed at step {step + 1}: {error.__class__.__name__}: {error}. {saved}"
