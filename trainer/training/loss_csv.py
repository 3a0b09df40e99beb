"""The loss CSV a run appends to (read back by `trainer.training.loss_history` when a run resumes)."""
import csv
from pathlib import Path


class LossCsv:
    """The loss CSV (step, epoch, epoch_step, loss, learn_rate), appended to across resumed runs; None as the
    path writes nothing (a process that keeps no log)."""

    def __init__(self, path: Path | None, flush_every: int = 1):
        self.file = self.writer = None
        if path is None:
            return
        new_file = not path.exists()
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.flush_every = flush_every
        if new_file:
            self.writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])

    def write(self, step, epoch, epoch_step, loss, lr):
        if self.writer is None:
            return
        self.writer.writerow([step, epoch, epoch_step, f"{loss:.7f}", lr])
        if self.flush_every and step % self.flush_every == 0:
            self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()
