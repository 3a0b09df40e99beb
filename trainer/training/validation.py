"""A validation loss that means something, the best step kept, and early stopping.

The training loss of textual inversion is noise: it depends mostly on the random timestep and noise of the
step. The same loss made deterministic tracks quality (Voronov et al., "Is This Loss Informative?", NeurIPS
2023). So a fixed set is chosen once per run, from the data alone:

1. images: the dataset's cached latents (the posterior means, which no training seed touches), or the images a
   user held out; spread evenly over the files when there are more than the set holds;
2. timesteps: spread evenly over the noise schedule, one per item;
3. noise: drawn from a generator of our own with a fixed seed, independent of the training seed;
4. prompts: a template line and the image's full caption, chosen once by a fixed-seed generator.

The loss of the current weights on that set, without gradients, then depends only on the weights, the data and
the model: two runs with different seeds agree at the start, and a resumed run's first value is the one logged
for that step. `Validation` runs the checks of one run: when they are due, `validation.csv`, the best copy
(`<name>-best.pt`, the lowest loss so far) and early stopping.
"""
import csv
import hashlib
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from trainer.training.dataset import build_prompt
from common import events
from trainer.training.denoising import noise_prediction_loss
from trainer.training.loss_history import read_loss_history

VALIDATION_SEED = 1234567  # fixed: the set never depends on the training seed
VALIDATION_CSV = "validation.csv"  # in the run's log folder, beside the loss CSV
SET_ITEMS = 8  # (image, timestep) pairs per check; sized so a check costs under 5 % of training (bench/)
FORWARD_BATCH = 4  # items per UNet call


@dataclass
class FixedSet:
    """The (latent, noise, timestep, prompt, alpha weight) items every check is computed on."""

    latents: list
    noise: list
    timesteps: list
    prompts: list
    weights: list
    fingerprint: str  # changes when the data, prompts, timesteps or model change

    def __len__(self):
        return len(self.latents)


def build_fixed_set(samples: list, template_lines: list, name: str, num_train_timesteps: int, model_hash: str,
                    items: int = SET_ITEMS) -> FixedSet:
    """`items` pairs of an image (spread over `samples`, cycling when there are fewer) and a timestep (spread
    over the schedule), with fixed noise and prompts."""
    generator = torch.Generator().manual_seed(VALIDATION_SEED)
    rng = random.Random(VALIDATION_SEED)
    fixed = FixedSet([], [], [], [], [], "")
    for k in range(items):
        sample = samples[k * len(samples) // items] if len(samples) >= items else samples[k % len(samples)]
        latent = sample.posterior_mean
        fixed.latents.append(latent)
        fixed.noise.append(torch.randn(latent.shape, generator=generator))
        fixed.timesteps.append(int((k + 0.5) * num_train_timesteps / items))
        fixed.prompts.append(build_prompt(template_lines, name, sample.filewords, rng))
        fixed.weights.append(sample.weight)
    digest = hashlib.sha256(repr((model_hash, fixed.timesteps, fixed.prompts)).encode())
    for latent in fixed.latents:
        digest.update(latent.float().numpy().tobytes())
    fixed.fingerprint = digest.hexdigest()[:10]
    return fixed


@torch.no_grad()
def fixed_set_loss(fixed: FixedSet, noise_scheduler, predict, device) -> float:
    """The training objective averaged over the items, where `predict(noisy, timesteps, prompts)` gives the
    model's prediction on `device`. Items of one latent size go through the UNet together, FORWARD_BATCH at a
    time."""
    by_shape = {}
    for index, latent in enumerate(fixed.latents):
        by_shape.setdefault(tuple(latent.shape), []).append(index)
    total = 0.0
    for indices in by_shape.values():
        for start in range(0, len(indices), FORWARD_BATCH):
            group = indices[start:start + FORWARD_BATCH]
            prompts = [fixed.prompts[i] for i in group]
            weights = None
            if any(fixed.weights[i] is not None for i in group):
                weights = torch.stack([fixed.weights[i] if fixed.weights[i] is not None
                                       else torch.ones_like(fixed.latents[i]) for i in group])
            loss = noise_prediction_loss(noise_scheduler, torch.stack([fixed.latents[i] for i in group]).to(device),
                           torch.stack([fixed.noise[i] for i in group]),
                           torch.tensor([fixed.timesteps[i] for i in group], dtype=torch.long), weights,
                           lambda noisy, timesteps: predict(noisy, timesteps, prompts))
            total += loss.item() * len(group)
    return total / len(fixed)


def start_validation(cfg, samples, template_lines, noise_scheduler, model_hash: str, predict, describe, save_best,
                     log_dir: Path | None, best_file: Path | None, emit, start_step: int, accelerator):
    """The run's `Validation`, or None when `cfg.validate_every` is 0. `log_dir`/`best_file` are None on
    processes that write no files."""
    if not cfg.validate_every:
        return None
    fixed = build_fixed_set(samples, template_lines, cfg.name, noise_scheduler.config.num_train_timesteps,
                            model_hash)

    def loss():
        return fixed_set_loss(fixed, noise_scheduler, predict, accelerator.device)

    def agree(value):  # every data-parallel process takes the main process's value
        if accelerator.num_processes == 1:
            return value
        from accelerate.utils import broadcast

        return float(broadcast(torch.tensor([value], device=accelerator.device))[0])

    return Validation(fixed, cfg.validate_every, cfg.early_stop, loss=loss, describe=describe, save_best=save_best,
                      best_file=best_file, csv_path=log_dir / VALIDATION_CSV if log_dir is not None else None,
                      emit=emit, start_step=start_step, agree=agree)


class Validation:
    """The checks of one run. `loss()` is the validation loss of the current weights; `describe(state)` adds
    columns (vector norms...) and may return a warning (emitted as `events.Warning`); `save_best(state, step, path)` writes the best copy to
    `best_file`; `csv_path` and `best_file` are None where this process writes no files. `agree(value)` makes
    every data-parallel process use the main process's value, so they all stop at the same step."""

    def __init__(self, fixed: FixedSet, every: int, patience: int, loss: Callable, describe: Callable,
                 save_best: Callable, best_file: Path | None, csv_path: Path | None, emit: Callable,
                 start_step: int, agree: Callable = lambda value: value):
        self.fixed, self.every, self.patience = fixed, every, patience
        self.loss, self.describe, self.save_best, self.best_file = loss, describe, save_best, best_file
        self.csv_path = csv_path
        self.emit, self.agree, self.start_step = emit, agree, start_step
        self.checked = []  # steps checked in this run
        self.best_step, self.best_loss, self.best_path = None, None, None
        self.stale = 0  # checks since the best improved (the run's first check is the baseline)
        self.stop_reason = None
        self.previous_rows = read_rows(csv_path)
        self._inherit_best()

    def _inherit_best(self):
        """A resumed run keeps the best of the run it continues (same set, a step it went through, the file
        still there), so the best copy is never overwritten by a worse one."""
        if self.start_step <= 0 or self.best_file is None or not self.best_file.is_file():
            return
        rows = [r for r in self.previous_rows if r.get("set") == self.fixed.fingerprint
                and int(r["step"]) <= self.start_step]
        if rows:
            best = min(rows, key=lambda r: float(r["val_loss"]))
            self.best_step, self.best_loss, self.best_path = int(best["step"]), float(best["val_loss"]), self.best_file

    def history(self, log_root, name: str) -> list:
        """[(step, validation loss)] of the earlier sessions' checks on the same fixed set, before the step this
        run starts at (which it checks itself): a resumed run's chart starts with them."""
        return read_loss_history(log_root, name, VALIDATION_CSV, self.start_step - 1, column="val_loss",
                                 keep=lambda row: row.get("set") == self.fixed.fingerprint)

    def due(self, step: int) -> bool:
        """Before the run's first step, then every `every` steps."""
        return not self.checked or (step % self.every == 0 and step != self.checked[-1])

    def check(self, step: int, state):
        """Compute, record and act on the validation loss of `state` (the current weights) at `step`."""
        started = time.perf_counter()
        value = self.agree(self.loss())
        seconds = time.perf_counter() - started
        first = not self.checked
        self.checked.append(step)
        improved = self.best_loss is None or value < self.best_loss
        if improved:
            self.best_step, self.best_loss, self.stale = step, value, 0
            if self.best_file is not None:
                self.best_path = self.save_best(state, step, self.best_file)
        elif not first:
            self.stale += 1
        columns, warning = self.describe(state)
        row = {"step": step, "val_loss": f"{value:.7f}", "best_step": self.best_step,
               "best_val_loss": f"{self.best_loss:.7f}", "seconds": f"{seconds:.3f}", "set": self.fixed.fingerprint,
               **columns}
        self._write(row)
        self.emit(events.Validated(step, value, self.best_step, self.best_loss, improved, seconds, columns))
        if warning:
            self.emit(events.Warning(warning))
        if self.patience and self.stale >= self.patience:
            checks = f"{self.stale} check" + ("s" if self.stale != 1 else "")
            self.stop_reason = (f"validation loss has not improved for {checks} (best {self.best_loss:.6f} at step "
                                f"{self.best_step})")

    def check_last(self, step: int, state):
        """The final weights of a finished run get a value too (when the last check was not at this step)."""
        if not self.checked or self.checked[-1] != step:
            self.check(step, state)

    def _write(self, row: dict):
        if self.csv_path is None:
            return
        new_file = not self.csv_path.exists()
        columns = list(row) if new_file else read_header(self.csv_path) or list(row)
        with open(self.csv_path, "a", newline="", encoding="utf-8") as file:
            writer = csv.DictWriter(file, columns, extrasaction="ignore")
            if new_file:
                writer.writeheader()
            writer.writerow(row)

    def summary(self) -> str:
        """A sentence for the end message: the best step and its file."""
        if self.best_step is None:
            return ""
        where = f": {self.best_path}" if self.best_path else ""
        return f" Best validation loss {self.best_loss:.6f} at step {self.best_step}{where}."


def read_header(path: Path) -> list:
    with open(path, newline="", encoding="utf-8") as file:
        return next(csv.reader(file), [])


def read_rows(path: Path | None) -> list:
    """The rows of an existing validation.csv (a resumed run appends to it); [] when there is none."""
    if path is None or not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as file:
        return [row for row in csv.DictReader(file) if row.get("step", "").isdigit() and row.get("val_loss")]
