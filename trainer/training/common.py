"""What the embedding and hypernetwork trainers share: result, accelerator, dataset, log folder, loss CSV, the
endless batch stream, the denoising loss, the optimizer-step loop itself and the closing sentence.

Each trainer (`trainer.training.textual_inversion`, `trainer.training.hypernetwork`) reads top to bottom: settings ->
data -> what trains and how its loss is computed (`LoopParts`) -> `run_training_loop` -> save.
"""
import csv
import datetime
import json
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from trainer.training.dataset import TextualInversionDataset, build_prompt
from common.errors import UserError
from common.files import atomic_write_text
from trainer.training.loss_history import epoch_of, read_loss_history
from trainer.models.precision import resolve_mixed_precision, weights_note
from trainer.sampling.txt2img import Txt2ImgParams, validate_params
from trainer.training.schedule import parse_schedule
from trainer.training.config import PreviewSettings


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


def make_accelerator(device: str, grad_accum: int, mixed_precision: str = "") -> Accelerator:
    """Autocast in the run's precision (`trainer.models.precision`: fp16 with a grad scaler by default on CUDA, fp32
    by default elsewhere, bf16 on request)."""
    device = str(device)
    mixed = resolve_mixed_precision(mixed_precision, device)
    allow_precision_change(mixed)
    return Accelerator(gradient_accumulation_steps=grad_accum, mixed_precision=mixed, cpu=device == "cpu")


def allow_precision_change(mixed: str):
    """accelerate keeps one process-wide state and refuses a second Accelerator with another precision; the app
    and the tests train with different settings in one process. A single process forgets the old choice (its
    `_reset_state` is accelerate's own way to do so); under `accelerate launch` the launch decides."""
    from accelerate.state import AcceleratorState, PartialState

    state = AcceleratorState._shared_state
    if not state or state.get("_mixed_precision") == mixed:
        return
    if PartialState().num_processes > 1:
        raise UserError(f"This run was launched with {state.get('_mixed_precision')} mixed precision; "
                        f"set the same in the training settings (not {mixed}).")
    AcceleratorState._reset_state()


def build_dataset(model, cfg, seed: int, emit, should_stop, warnings: list) -> TextualInversionDataset:
    """The cached-latent dataset of `cfg.dataset`; skipped files are added to `warnings`."""
    emit({"type": "message", "text": f"Preparing dataset from {cfg.dataset}..."})
    dataset = TextualInversionDataset(
        model, cfg.dataset, cfg.width, cfg.height, resize=not cfg.no_resize,
        latent_sampling=cfg.latent_sampling, use_alpha_weight=cfg.alpha_weight, word_regex=cfg.word_regex,
        join_string=cfg.join_string, seed=seed, progress=emit, should_stop=should_stop,
        cache_dir=cfg.latent_cache_folder())
    for file_name, reason in dataset.report.skipped:
        warnings.append(f"Skipped {file_name}: {reason}.")
    cached = (f" ({dataset.report.cached} from the latent cache in {dataset.cache_folder})"
              if dataset.cache_folder is not None else "")
    skipped = "".join(f"; skipped {file_name} ({reason})" for file_name, reason in dataset.report.skipped)
    emit({"type": "message", "text": f"Dataset: {len(dataset)} images{cached}{skipped}."})
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
    return noise_prediction_loss(noise_scheduler, latents, noise, timesteps, batch.weights, predict)


def noise_prediction_loss(noise_scheduler, latents, noise, timesteps, weights, predict) -> torch.Tensor:
    """The objective for given noise and timesteps (the validation set fixes them; training draws them)."""
    device = latents.device
    noise, timesteps = noise.to(device), timesteps.to(device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    prediction = predict(noisy, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        target = noise_scheduler.get_velocity(latents, noise, timesteps)
    else:
        target = noise
    loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
    if weights is not None:
        loss = loss * weights.to(loss.device)
    return loss.mean()


def preview_params(cfg, caption: str) -> Txt2ImgParams:
    """The reference's default preview (the batch's first caption, 20 steps, CFG 7, random seed, training
    size) unless the user asked for the txt2img tab's parameters."""
    p = cfg.preview or PreviewSettings()
    return validate_params(Txt2ImgParams(
        prompt=p.prompt or caption, negative_prompt=p.negative_prompt, sampler=p.sampler, steps=p.steps,
        cfg_scale=p.cfg_scale, seed=p.seed, width=p.width or cfg.width, height=p.height or cfg.height))


def end_message(status: str, step: int, saved: str, error=None, what: str = "embedding",
                stopped_early: str | None = None) -> str:
    """The closing sentence of a run, true to what happened (`saved` says what was saved, or that nothing was;
    `what` names the thing trained; `stopped_early` why validation ended a run early)."""
    if status == "finished" and stopped_early:
        return f"Training stopped early at {step} steps: {stopped_early}. {saved}"
    if status == "finished":
        return f"Training finished at {step} steps. {saved}"
    if status == "interrupted":
        return f"Training interrupted at {step} steps. {saved}"
    if status == "nan":
        return (f"Training stopped at step {step + 1}: the loss became NaN or infinite (try a lower "
                f"learning rate). The last finite {what}, from step {step}, was kept. {saved}")
    return f"Training failed at step {step + 1}: {error.__class__.__name__}: {error}. {saved}"


@dataclass
class LoopParts:
    """What differs between training an embedding and a hypernetwork; the loop itself is shared."""

    module: torch.nn.Module  # what `accelerator.accumulate` watches
    params: list  # the trainable tensors: clipped, and checked to stay finite
    compute_loss: Callable  # (batch, prompts) -> loss tensor
    snapshot: Callable  # () -> a detached copy of the trainable state ("last good")
    save_copy: Callable  # (state, step) -> path of the copy written into the log dir
    preview: Callable  # (state, step, caption) -> None; renders and writes a preview image
    before_optimizer_step: Callable | None = None  # e.g. averaging gradients over processes by hand


@dataclass
class LoopOutcome:
    status: str  # "finished" | "interrupted" | "failed" | "nan"
    step: int
    last_good: object  # the state after the last finite optimizer step
    error: Exception | None = None
    stopped_early: str | None = None  # why validation stopped the run (early stop), if it did


def run_training_loop(cfg, parts: LoopParts, *, accelerator, optimizer, dataset, template_lines, rng, generator,
                      lr_schedule, clip_schedule, start_step, log_dir, csv_name, emit, should_stop,
                      validation=None) -> LoopOutcome:
    """Optimizer steps until max steps, the end of the learning-rate schedule, Interrupt, a non-finite loss, an
    exception or early stop; every step emits its numbers, writes the loss CSV and, at their intervals, a copy
    and a preview. `validation` (trainer.training.validation.Validation) checks before the first step, every N steps
    and at the end of a finished run.

    Interrupt is checked before every micro-batch. Whatever ends the run, `last_good` is the state after the
    last finite step, for the caller to save."""
    is_main = accelerator.is_main_process
    # the earlier sessions' loss (a resumed run's chart shows them), read before this session appends
    history = read_loss_history(log_dir.parent.parent, cfg.name, csv_name, start_step) if log_dir else []
    loss_csv = LossCsv(log_dir / csv_name, cfg.loss_csv_every) if log_dir is not None else None
    step = start_step
    last_good = parts.snapshot()
    status, error = "finished", None
    stream = batch_stream(dataset, cfg.batch_size, rng, generator, accelerator)
    # epochs count from the overall step, as the reference does: optimizer steps per pass over the dataset
    epoch_len = max(1, dataset.batches_per_epoch(cfg.batch_size) // (cfg.grad_accum * accelerator.num_processes))
    started = time.perf_counter()
    emit({"type": "start", "step": step, "max_steps": cfg.steps, "dataset_size": len(dataset),
          "epoch_len": epoch_len, "history": history})
    try:
        while step < cfg.steps:
            if validation is not None and validation.due(step):  # evaluate at the top, as nanoGPT does
                validation.check(step, last_good)
                if validation.stop_reason:
                    break
            lr = lr_schedule.value_at(step)
            if lr is None:
                break  # the schedule ran out: the reference ends training here
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_total = 0.0
            for _ in range(cfg.grad_accum):
                if should_stop():
                    status = "interrupted"
                    break
                _, _, batch = next(stream)
                prompts = [build_prompt(template_lines, cfg.name, words, rng, cfg.shuffle_tags, cfg.tag_dropout)
                           for words in batch.filewords]
                with accelerator.accumulate(parts.module):
                    loss = parts.compute_loss(batch, prompts)
                    if not torch.isfinite(loss):
                        status = "nan"
                        break
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if parts.before_optimizer_step is not None:
                            parts.before_optimizer_step()
                        if clip_schedule is not None:
                            clip_value = clip_schedule.value_at(step) or clip_schedule.value
                            if cfg.clip_grad_mode == "value":
                                accelerator.clip_grad_value_(parts.params, clip_value)
                            else:
                                accelerator.clip_grad_norm_(parts.params, clip_value)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_total += loss.item() / cfg.grad_accum
            if status != "finished":
                optimizer.zero_grad(set_to_none=True)
                break
            if not all(torch.isfinite(param).all() for param in parts.params):
                status = "nan"
                break
            step += 1
            last_good = parts.snapshot()
            elapsed = time.perf_counter() - started
            epoch, epoch_step = epoch_of(step, epoch_len)
            emit({"type": "step", "step": step, "max_steps": cfg.steps, "loss": loss_total, "lr": lr,
                  "epoch": epoch, "epoch_step": epoch_step, "epoch_len": epoch_len, "prompt": prompts[0],
                  "it_per_s": (step - start_step) / elapsed if elapsed > 0 else 0.0})
            if not is_main or log_dir is None:
                continue
            loss_csv.write(step, epoch, epoch_step, loss_total, lr)
            if cfg.save_every and step % cfg.save_every == 0:
                emit({"type": "saved", "path": str(parts.save_copy(last_good, step)), "step": step})
            if cfg.preview_every and step % cfg.preview_every == 0:
                parts.preview(last_good, step, prompts[0])
        if validation is not None and status == "finished" and not validation.stop_reason:
            validation.check_last(step, last_good)
    except Exception as e:  # noqa: BLE001 - reported truthfully by the caller, after saving the last good state
        status, error = "failed", e
    finally:
        if loss_csv is not None:
            loss_csv.close()
    return LoopOutcome(status, step, last_good, error, validation.stop_reason if validation is not None else None)


def report_data_parallel(accelerator, flat: torch.Tensor, emit, what: str):
    """With several processes, say whether every one ends with the very same trained values."""
    if accelerator.num_processes <= 1:
        return
    gathered = accelerator.gather(flat.float().to(accelerator.device)[None]).cpu()
    in_sync = all(torch.equal(gathered[0], other) for other in gathered[1:])
    emit({"type": "message", "text": f"Data parallel over {accelerator.num_processes} processes; {what} "
          + ("identical on every process." if in_sync else "DIFFER between processes.")})


def parse_schedules(cfg, start_step: int, what: str):
    """The learning-rate and clip-value schedules from `start_step` on; checks the preview settings too, so bad
    input is a sentence before training rather than a failure at step N."""
    lr_schedule = parse_schedule(cfg.learn_rate, cfg.steps, start_step, "learning rate")
    clip_schedule = None
    if cfg.clip_grad_mode != "disabled":
        clip_schedule = parse_schedule(cfg.clip_grad_value, cfg.steps, start_step, "gradient clipping")
    if cfg.preview_every:
        preview_params(cfg, "a caption")
    if start_step >= cfg.steps:
        raise UserError(f"{what} '{cfg.name}' already has {start_step} steps, not below max steps {cfg.steps}; "
                        "raise Max steps to train further.")
    return lr_schedule, clip_schedule


def seeded_randomness(cfg, accelerator):
    """(seed, prompt/shuffle rng, noise generator); each data-parallel process draws its own stream."""
    seed = cfg.seed if cfg.seed is not None else random.randrange(2**31)
    rng = random.Random(seed + accelerator.process_index)
    generator = torch.Generator().manual_seed(seed + accelerator.process_index)
    return seed, rng, generator


def restore_optimizer_state(optimizer, state, emit, what: str):
    """Resume the optimizer from the state saved beside the file, when there is one that fits."""
    if state is None:
        return
    try:
        optimizer.load_state_dict(state)
        emit({"type": "message", "text": f"Resumed the optimizer state saved beside the {what}."})
    except (ValueError, KeyError, RuntimeError):
        emit({"type": "message", "text": "Saved optimizer state does not match; starting it fresh."})


@dataclass
class RunStart:
    """What both trainers set up the same way once they know the step they start from."""

    lr_schedule: object
    clip_schedule: object
    accelerator: Accelerator
    seed: int
    rng: random.Random
    generator: torch.Generator
    dataset: TextualInversionDataset
    validation_samples: list  # the held-out images, or the training images when none are held out
    checkpointing: bool = False  # UNet gradient checkpointing for this run (`trainer.models.precision`)


def start_run(model, cfg, start_step: int, what: str, accelerator, warnings: list, emit, should_stop,
              checkpointing: bool | None = None) -> RunStart:
    """Schedules (a sentence for bad ones), the accelerator, seeded randomness, the warnings so far, and the
    dataset with its latents cached. `checkpointing`: None follows the settings."""
    lr_schedule, clip_schedule = parse_schedules(cfg, start_step, what)
    accelerator = accelerator or make_accelerator(model.device.type, cfg.grad_accum, cfg.mixed_precision)
    checkpointing = cfg.gradient_checkpointing if checkpointing is None else checkpointing
    seed, rng, generator = seeded_randomness(cfg, accelerator)
    for message in warnings:
        emit({"type": "message", "text": "Warning: " + message})
    emit({"type": "message", "text": weights_note(model, accelerator, checkpointing)})
    dataset = build_dataset(model, cfg, seed, emit, should_stop, warnings)
    validation_samples = dataset.samples
    if cfg.validate_every and cfg.validation_split:
        validation_samples = dataset.hold_out(cfg.validation_split)
        held, kept = len(validation_samples), len(dataset)
        emit({"type": "message", "text": f"Validation: {held} of {held + kept} images held out, {kept} left to "
                                         "train on."})
    return RunStart(lr_schedule, clip_schedule, accelerator, seed, rng, generator, dataset, validation_samples,
                    checkpointing)

