"""What the embedding and hypernetwork training loops share: result, accelerator, dataset, log folder, loss CSV,
the endless batch stream, the denoising loss and the closing sentence.

Each loop (`trainer.textual_inversion`, `trainer.hypernetwork_training`) still reads top to bottom; only these
plain pieces live here.
"""
import csv
import datetime
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from .dataset import TextualInversionDataset
from .errors import UserError
from .files import atomic_write_text
from .sampling import Txt2ImgParams, validate_params
from .train_config import PreviewSettings


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted" | "failed" | "nan"
    step: int
    message: str
    embedding_path: str | None = None  # the file trained: an embedding, or a hypernetwork (see `path`)
    log_dir: str | None = None
    warnings: list = field(default_factory=list)

    @property
    def path(self) -> str | None:
        return self.embedding_path


def resolve_template(templates_dir, template: str) -> Path:
    path = Path(template)
    if not path.is_file():
        path = Path(templates_dir) / template
    if not path.is_file():
        raise UserError(f"Prompt template '{template}' was not found in {templates_dir}.")
    return path


def make_accelerator(device: str, grad_accum: int) -> Accelerator:
    """fp16 autocast with a grad scaler on CUDA (bf16 where supported would also do); fp32 elsewhere."""
    device = str(device)
    mixed = "fp16" if device.startswith("cuda") else "no"
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed, cpu=device == "cpu")


def build_dataset(model, cfg, seed: int, emit, should_stop, warnings: list) -> TextualInversionDataset:
    """The cached-latent dataset of `cfg.dataset`; skipped files are added to `warnings`."""
    emit({"type": "message", "text": f"Preparing dataset from {cfg.dataset}..."})
    dataset = TextualInversionDataset(
        model, cfg.dataset, cfg.width, cfg.height, resize=not cfg.no_resize,
        latent_sampling=cfg.latent_sampling, use_alpha_weight=cfg.alpha_weight, word_regex=cfg.word_regex,
        join_string=cfg.join_string, seed=seed, progress=emit, should_stop=should_stop)
    for file_name, reason in dataset.report.skipped:
        warnings.append(f"Skipped {file_name}: {reason}.")
    emit({"type": "message", "text": f"Dataset: {len(dataset)} images, {len(dataset.report.skipped)} skipped."})
    return dataset


def prepare_log_dir(cfg, subfolders, settings: dict) -> Path:
    """``<log dir>/<YYYY-MM-DD>/<name>/`` with its subfolders, and the complete settings as JSON in it."""
    log_dir = Path(cfg.log_dir) / datetime.date.today().isoformat() / cfg.name
    for sub in subfolders:
        (log_dir / sub).mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    atomic_write_text(log_dir / f"settings-{stamp}.json", json.dumps(dict(cfg.to_json(), **settings), indent=2))
    return log_dir


class LossCsv:
    """The loss CSV (step, epoch, epoch_step, loss, learn_rate), appended to across resumed runs."""

    def __init__(self, path: Path, flush_every: int = 1):
        new_file = not path.exists()
        self.file = open(path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.flush_every = flush_every
        if new_file:
            self.writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])

    def write(self, step, epoch, epoch_step, loss, lr):
        self.writer.writerow([step, epoch, epoch_step, f"{loss:.7f}", lr])
        if self.flush_every and step % self.flush_every == 0:
            self.file.flush()

    def close(self):
        self.file.close()


def batch_stream(dataset, batch_size: int, rng, generator, accelerator):
    """Batches forever, epoch after epoch: yields (epoch, step within the epoch, batch)."""
    epoch = 0
    while True:
        for epoch_step, batch in enumerate(dataset.epoch(batch_size, rng, generator, accelerator.process_index,
                                                         accelerator.num_processes)):
            yield epoch, epoch_step, batch
        epoch += 1


def denoising_loss(noise_scheduler, batch, generator, device, predict) -> torch.Tensor:
    """The model's own training objective on one batch: noise the latents at random timesteps, ask
    ``predict(noisy, timesteps)`` for the noise (or the velocity, for v-prediction models), MSE, weighted by the
    alpha-channel weights when the batch has them. Mean over everything."""
    latents = batch.latents.to(device)
    noise = torch.randn(latents.shape, generator=generator).to(latents.device)
    timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                              generator=generator).to(latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = predict(noisy, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if batch.weights is not None:
        loss = loss * batch.weights.to(loss.device)
    return loss.mean()


def preview_params(cfg, caption: str) -> Txt2ImgParams:
    """The reference's default preview (the batch's first caption, 20 steps, CFG 7, random seed, training
    size) unless the user asked for the txt2img tab's parameters."""
    p = cfg.preview or PreviewSettings()
    return validate_params(Txt2ImgParams(
        prompt=p.prompt or caption, negative_prompt=p.negative_prompt, sampler=p.sampler, steps=p.steps,
        cfg_scale=p.cfg_scale, seed=p.seed, width=p.width or cfg.width, height=p.height or cfg.height))


def end_message(status: str, step: int, saved: str, error=None, what: str = "embedding") -> str:
    """The closing sentence of a run, true to what happened (`saved` says what was saved, or that nothing was;
    `what` names the thing trained)."""
    if status == "finished":
        return f"Training finished at {step} steps. {saved}"
    if status == "interrupted":
        return f"Training interrupted at {step} steps. {saved}"
    if status == "nan":
        return (f"Training stopped at step {step + 1}: the loss became NaN or infinite (try a lower "
                f"learning rate). The last finite {what}, from step {step}, was kept. {saved}")
    return f"Training failed at step {step + 1}: {error.__class__.__name__}: {error}. {saved}"
