"""Train a hypernetwork: only its MLPs learn; text encoder, UNet and VAE stay frozen.

`train_hypernetwork` reads top to bottom as `trainer.training.textual_inversion.train_embedding` does (1. settings
and files -> 2. data -> 3. what trains -> 4. validation -> 5. the step loop -> 6. save), with the same events,
job, chart, previews and Interrupt. What differs:

* the hypernetwork acts inside the UNet (`apply_hypernetworks` around each UNet call), with dropout on while
  training and multiplier 1, as in the reference;
* the text encoder's output does not depend on it, so when tags are neither shuffled nor dropped each distinct
  prompt is encoded once and kept;
* AdamW with the reference's weight decay 0.01, default learning rate "0.00001";
* log files `<log dir>/<date>/<name>/hypernetworks/<name>-<step>.pt`, `images/`, `hypernetwork_loss.csv`.

Data parallel (`accelerate launch`): the hypernetwork runs inside the UNet rather than through a wrapped
module's forward, so gradients are averaged over the processes explicitly before each optimizer step.
"""
import time
from collections import ChainMap
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from common import events
from common.errors import UserError
from common.events import Status
from trainer.hypernetworks.attention import apply_hypernetworks, extract_hypernetwork_tags
from trainer.hypernetworks.network import (HypernetworkFolder, HypernetworkReadError, context_widths,
                                           list_hypernetworks, load_optimizer_state, read_hypernetwork,
                                           save_hypernetwork, save_optimizer_state)
from trainer.locks import training_lock
from trainer.models.precision import training_precision, weights_note
from trainer.models.sdxl import refuse_sdxl_hypernetwork_training
from trainer.prompts.conditioning import PromptEncoder
from common.files import save_png
from trainer.sampling.txt2img import txt2img
from trainer.training.accelerator import data_parallel_sentence, make_accelerator, seeded_randomness
from trainer.training.batches import batch_stream, optimizer_steps_per_epoch
from trainer.training.config import TrainConfig
from trainer.training.dataset import build_prompt, dataset_from_settings, read_template, resolve_template
from trainer.training.denoising import denoising_loss
from trainer.training.log_folder import prepare_log_dir
from trainer.training.loss_csv import LossCsv
from trainer.training.loss_history import epoch_of, read_loss_history
from trainer.training.previews import preview_params
from trainer.training.result import TrainResult, closing_sentence
from trainer.training.validation import start_validation

DEFAULT_LEARN_RATE = "0.00001"
WEIGHT_DECAY = 0.01  # torch's AdamW default, which the reference uses
MAX_CACHED_PROMPTS = 2048
LOSS_CSV = "hypernetwork_loss.csv"


def find_hypernetwork_file(hypernetwork_dir, name: str) -> Path:
    path = list_hypernetworks(hypernetwork_dir).get(name)
    if path is None:
        raise UserError(f"Hypernetwork '{name}' was not found in {hypernetwork_dir}; create it first.")
    return path


class CachedConditioning:
    """Prompt -> text-encoder output, computed without gradients; each distinct prompt encoded once when
    `cache` (no tag shuffling or dropout, so prompts repeat). Kept on the CPU, at most MAX_CACHED_PROMPTS."""

    def __init__(self, encoder: PromptEncoder, device, autocast, cache: bool):
        self.encoder, self.device, self.autocast, self.cache = encoder, device, autocast, cache
        self.stored = {}

    @torch.no_grad()
    def __call__(self, prompts: list) -> torch.Tensor:
        with self.autocast():
            if not self.cache:
                return self.encoder(prompts).to(self.device)
            for prompt in dict.fromkeys(prompts):
                if prompt not in self.stored:
                    if len(self.stored) >= MAX_CACHED_PROMPTS:
                        self.stored.pop(next(iter(self.stored)))
                    self.stored[prompt] = self.encoder([prompt])[0].cpu()
            rows = [self.stored[prompt] for prompt in prompts]
            if len({row.shape for row in rows}) > 1:  # prompts of different chunk counts: encode them together
                return self.encoder(prompts).to(self.device)
            return torch.stack(rows).to(self.device)


def train_hypernetwork(model, cfg: TrainConfig, hypernetwork_dir, *args, **kwargs) -> TrainResult:
    """Train the hypernetwork `cfg.name` (arguments as `_train_hypernetwork`) holding its training lock."""
    with training_lock(hypernetwork_dir, cfg.name, "hypernetwork", kwargs.get("accelerator")):
        return _train_hypernetwork(model, cfg, hypernetwork_dir, *args, **kwargs)


def _train_hypernetwork(model, cfg: TrainConfig, hypernetwork_dir, templates_dir, embeddings=None,
                        progress=None, should_stop=None, accelerator=None) -> TrainResult:
    """Train the hypernetwork `cfg.name` (a file in `hypernetwork_dir`; settings checked by `cfg.validate()`) on
    `cfg.dataset`. `embeddings` (name -> vectors) may appear in the prompts. Events and interruption as
    `train_embedding`."""
    emit = progress or events.ignore
    should_stop = should_stop or (lambda: False)
    refuse_sdxl_hypernetwork_training(model)

    # 1. Settings and files ---------------------------------------------------------------------------------
    template_path = resolve_template(templates_dir, cfg.template)
    template_lines = read_template(template_path)
    path = find_hypernetwork_file(hypernetwork_dir, cfg.name)
    try:
        hypernetwork = read_hypernetwork(path)
    except HypernetworkReadError as e:
        raise UserError(f"Hypernetwork file {path} cannot be used: {e}.") from None
    widths = context_widths(model.unet)
    if not [size for size in hypernetwork.sizes if size in widths]:
        raise UserError(f"Hypernetwork '{cfg.name}' has modules for widths {hypernetwork.sizes}, but this model's "
                        f"attention uses {widths}: it would not learn anything (made for another model?).")
    unused = [size for size in hypernetwork.sizes if size not in widths]
    if unused:
        emit(events.Warning(f"Modules {unused} of '{cfg.name}' match no attention width of this model "
                            f"({widths}); they stay as they are."))
    start_step = hypernetwork.step or 0
    lr_schedule, clip_schedule = cfg.schedules(start_step, "hypernetwork")
    if cfg.gradient_checkpointing:  # its attention processors follow the calling thread; recomputation may not
        emit(events.Warning("Gradient checkpointing applies to embedding training; hypernetworks train without it."))
    accelerator = accelerator or make_accelerator(model.device.type, cfg.grad_accum, cfg.mixed_precision)
    is_main = accelerator.is_main_process
    seed, rng, generator = seeded_randomness(cfg.seed, accelerator)
    emit(events.Message(weights_note(model, accelerator, checkpointing=False)))

    # 2. Data: each image VAE-encoded once (or read from the latent cache); some held out for validation ------
    dataset = dataset_from_settings(model, cfg, seed, emit, should_stop)
    validation_samples = dataset.samples
    if cfg.validate_every and cfg.validation_split:
        validation_samples = dataset.hold_out(cfg.validation_split)
        held, kept = len(validation_samples), len(dataset)
        emit(events.Message(f"Validation: {held} of {held + kept} images held out, {kept} left to train on."))
    log_dir = None
    if is_main and cfg.log_dir:
        structure = dict(sizes=hypernetwork.sizes, layer_structure=hypernetwork.layer_structure,
                         activation_func=hypernetwork.activation, weight_initialization=hypernetwork.weight_init,
                         is_layer_norm=hypernetwork.layer_norm, dropout_structure=hypernetwork.dropout_structure)
        log_dir = prepare_log_dir(cfg, ("hypernetworks", "images"), dict(
            kind="hypernetwork", seed=seed, start_step=start_step, template_path=str(template_path),
            model_hash=model.checkpoint_hash, hypernetwork=structure))

    # 3. What trains: the hypernetwork's MLPs inside the UNet's attention; AdamW, resumed when state was saved --
    hypernetwork.to(accelerator.device).train().requires_grad_(True)
    params = list(hypernetwork.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr_schedule.value, weight_decay=WEIGHT_DECAY)
    saved_state = load_optimizer_state(path) if cfg.save_optimizer_state else None
    if saved_state is not None:
        try:
            optimizer.load_state_dict(saved_state)
            emit(events.Message("Resumed the optimizer state saved beside the hypernetwork."))
        except (ValueError, KeyError, RuntimeError):
            emit(events.Message("Saved optimizer state does not match; starting it fresh."))
    optimizer = accelerator.prepare(optimizer)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, dict(embeddings or {}))
    conditioning = CachedConditioning(encoder, accelerator.device, accelerator.autocast,
                                      cache=not cfg.shuffle_tags and not cfg.tag_dropout)
    training_stack = [(hypernetwork, 1.0)]  # the reference trains at strength 1

    def predict(noisy, timesteps, prompts):
        cond = conditioning(prompts)
        with accelerator.autocast(), apply_hypernetworks(model.unet, training_stack):
            return model.unet(noisy, timesteps, cond).sample

    def current_weights():
        return {key: value.detach().clone() for key, value in hypernetwork.state_dict().items()}

    def save_as(weights, step, file_path):
        """Write `weights` at `step` to `file_path` (through the module being trained, which holds them already
        or, for a copy of the last good step, takes them back)."""
        hypernetwork.load_state_dict(weights)
        hypernetwork.step = step
        hypernetwork.sd_checkpoint, hypernetwork.sd_checkpoint_name = model.checkpoint_hash, model.name
        return save_hypernetwork(hypernetwork, file_path)

    # 4. Validation: a fixed set's loss, the weights' norm, the best copy, early stop (trainer.training.validation)
    def validation_predict(noisy, timesteps, prompts):
        hypernetwork.eval()  # no dropout: the value depends on the weights alone
        try:
            return predict(noisy, timesteps, prompts)
        finally:
            hypernetwork.train()

    def weight_norm(weights):  # validation.csv's health column for hypernetworks; no warning
        norm = torch.cat([value.float().flatten() for value in weights.values()]).norm()
        return {"weight_norm": round(float(norm), 6)}, None

    validation = start_validation(
        cfg, validation_samples, template_lines, noise_scheduler, model.checkpoint_hash, validation_predict,
        describe=weight_norm, save_best=save_as, log_dir=log_dir,
        best_file=log_dir / "hypernetworks" / f"{cfg.name}-best.pt" if log_dir else None, emit=emit,
        start_step=start_step, accelerator=accelerator)

    # 5. The step loop ---------------------------------------------------------------------------------------
    history = read_loss_history(log_dir.parent.parent, cfg.name, LOSS_CSV, start_step) if log_dir else []
    checks = validation.history(log_dir.parent.parent, cfg.name) if validation is not None and log_dir else []
    loss_csv = LossCsv(log_dir / LOSS_CSV if log_dir else None, cfg.loss_csv_every)
    batches = batch_stream(dataset, cfg.batch_size, rng, generator, accelerator)
    epoch_len = optimizer_steps_per_epoch(dataset, cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    step, last_good = start_step, current_weights()  # last_good: after the last finite step, what is saved
    status, error = Status.FINISHED, None
    started = time.perf_counter()
    with training_precision(model, accelerator, checkpointing=False):  # frozen weights' dtype on CUDA
        emit(events.Started(step, cfg.steps, len(dataset), epoch_len, tuple(history), tuple(checks)))  # after the cast
        try:
            while step < cfg.steps:
                if validation is not None and validation.due(step):  # evaluate at the top, as nanoGPT does
                    validation.check(step, last_good)
                    if validation.stop_reason:
                        break
                lr = lr_schedule.advance(step)  # the learning rate for this step
                if lr is None:
                    break  # the schedule ran out: the reference ends training here
                for group in optimizer.param_groups:
                    group["lr"] = lr
                loss_total = 0.0
                for _ in range(cfg.grad_accum):
                    if should_stop():
                        status = Status.INTERRUPTED
                        break
                    _, _, batch = next(batches)
                    prompts = [build_prompt(template_lines, cfg.name, words, rng, cfg.shuffle_tags,
                                            cfg.tag_dropout) for words in batch.filewords]
                    with accelerator.accumulate(hypernetwork):
                        # forward through the UNet with the hypernetwork in its attention, and the denoising loss
                        loss = denoising_loss(noise_scheduler, batch, generator, accelerator.device,
                                              lambda noisy, timesteps: predict(noisy, timesteps, prompts))
                        if not torch.isfinite(loss):
                            status = Status.NAN
                            break
                        accelerator.backward(loss)  # then clip, and step (accelerate skips it between micro-batches)
                        if accelerator.sync_gradients:
                            if accelerator.num_processes > 1:  # no wrapped module averages them for us
                                for param in params:
                                    if param.grad is None:
                                        param.grad = torch.zeros_like(param)
                                    param.grad.copy_(accelerator.reduce(param.grad, reduction="mean"))
                            if clip_schedule is not None:
                                clip_value = clip_schedule.advance(step) or clip_schedule.value
                                if cfg.clip_grad_mode == "value":
                                    accelerator.clip_grad_value_(params, clip_value)
                                else:
                                    accelerator.clip_grad_norm_(params, clip_value)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    loss_total += loss.item() / cfg.grad_accum
                if status != Status.FINISHED:  # interrupted or NaN mid-step: the last good state stays
                    optimizer.zero_grad(set_to_none=True)
                    break
                if not all(torch.isfinite(param).all() for param in params):
                    status = Status.NAN
                    break
                step += 1
                last_good = current_weights()
                elapsed = time.perf_counter() - started
                epoch, epoch_step = epoch_of(step, epoch_len)
                emit(events.Step(step, cfg.steps, loss_total, lr, epoch, epoch_step, epoch_len, prompts[0],
                                 (step - start_step) / elapsed if elapsed > 0 else 0.0))
                if log_dir is None:
                    continue  # a process that writes no files
                loss_csv.write(step, epoch, epoch_step, loss_total, lr)
                if cfg.save_every and step % cfg.save_every == 0:
                    copy = save_as(last_good, step, log_dir / "hypernetworks" / f"{cfg.name}-{step}.pt")
                    emit(events.Saved(str(copy), step))
                if cfg.preview_every and step % cfg.preview_every == 0:
                    hypernetwork.eval()  # no dropout in previews
                    try:
                        make_preview(model, cfg, hypernetwork, step, embeddings, hypernetwork_dir, prompts[0],
                                     log_dir, emit)
                    finally:
                        hypernetwork.train()
            if validation is not None and status == Status.FINISHED and not validation.stop_reason:
                validation.check_last(step, last_good)
        except Exception as e:  # noqa: BLE001 - told truthfully below, after saving the last good weights
            status, error = Status.FAILED, e
        finally:
            loss_csv.close()
            hypernetwork.eval().requires_grad_(False)

    # 6. Save what was learned -------------------------------------------------------------------------------
    if is_main and step > start_step:
        save_as(last_good, step, path)
        if cfg.save_optimizer_state and status in (Status.FINISHED, Status.INTERRUPTED):
            save_optimizer_state(path, optimizer.state_dict())
    in_sync = data_parallel_sentence(accelerator, torch.cat([value.flatten() for value in last_good.values()]),
                                     "weights")
    if in_sync:
        emit(events.Message(in_sync))
    accelerator.wait_for_everyone()
    saved = f"Hypernetwork saved to {path}." if step > start_step else "No steps were made, nothing saved."
    message = closing_sentence(status, step, saved, error, what="hypernetwork",
                               stopped_early=validation.stop_reason if validation is not None else None)
    message += validation.summary() if validation is not None else ""
    emit(events.Ended(status, message, step))
    return TrainResult(status, step, message, str(path) if is_main else None, str(log_dir) if log_dir else None)


def preview_prompt(prompt: str, name: str) -> str:
    """The preview applies the hypernetwork being trained at strength 1 (as the reference's previews do), said
    in the prompt so the image's infotext reproduces it; a prompt that names it already keeps its own strength."""
    _, tags = extract_hypernetwork_tags(prompt)
    if any(tag_name == name for tag_name, _ in tags):
        return prompt
    return f"{prompt} <hypernet:{name}:1>".strip()


def make_preview(model, cfg: TrainConfig, hypernetwork, step: int, embeddings, hypernetwork_dir, caption: str,
                 log_dir: Path, emit):
    """Render a preview with the current weights; write images/<name>-<step>.png."""
    params = preview_params(cfg, caption)
    params.prompt = preview_prompt(params.prompt, cfg.name)
    source = ChainMap({cfg.name: hypernetwork}, HypernetworkFolder(hypernetwork_dir))
    image, infotext, seed = txt2img(model, params, dict(embeddings or {}), hypernetworks=source)[0]
    path = log_dir / "images" / f"{cfg.name}-{step}.png"
    save_png(image, path, infotext)
    emit(events.Preview(step, image, params.prompt, seed, (str(path),)))
