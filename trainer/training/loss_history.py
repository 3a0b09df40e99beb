"""The loss and validation loss a run's earlier sessions wrote: a resumed run's chart starts with them.

Each session appends to `<log dir>/<date>/<name>/<csv name>`; a run resumed on another day writes into another
date folder, so every date folder of the name is read, oldest first, and a step written twice keeps its last
value (a session that was rolled back and trained again)."""
import csv
from pathlib import Path


def read_loss_history(log_root, name: str, csv_name: str, up_to_step: int, column: str = "loss",
                      keep=lambda row: True) -> list:
    """[(step, value of `column`)] for steps 0..`up_to_step`, sorted by step, from every date folder under
    `log_root`; only the rows `keep(row)` accepts."""
    if up_to_step < 0 or not log_root:
        return []
    by_step = {}
    for path in sorted(Path(log_root).glob(f"*/{name}/{csv_name}")):
        try:
            with open(path, newline="", encoding="utf-8") as f:
                for row in csv.DictReader(f):
                    try:
                        step, loss = int(row["step"]), float(row[column])
                    except (KeyError, TypeError, ValueError):
                        continue  # a torn last line or a foreign file: the rest still counts
                    if 0 <= step <= up_to_step and keep(row):
                        by_step[step] = loss
        except OSError:
            continue
    return sorted(by_step.items())


def epoch_of(step: int, steps_per_epoch: int) -> tuple:
    """(epoch, step within the epoch, 0-based) of overall optimizer step `step` (1-based), as the reference
    counts them: from the overall step and the epoch length, so a resumed run continues the count."""
    steps_per_epoch = max(1, steps_per_epoch)
    return (step - 1) // steps_per_epoch, (step - 1) % steps_per_epoch
