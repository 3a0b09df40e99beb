"""Train a textual-inversion embedding: only its vectors learn; text encoder, UNet and VAE stay frozen.

`train_embedding` reads top to bottom: 1. settings and files -> 2. data (every image encoded once, its latents
cached on disk) -> 3. what trains (the vectors), its optimizer and the UNet call -> 4. validation -> 5. the
step loop itself (forward, loss, backward, clipping, optimizer step, learning-rate schedule, then the loss CSV,
copies, previews and Interrupt at their cadence) -> 6. save.

On SDXL the vectors are both encoders' (clip_l and clip_g side by side) and the UNet also gets the pooled text
and each image's size/crop (`trainer.models.sdxl`). Device placement, mixed precision, gradient accumulation and
data parallelism go through accelerate, so `accelerate launch -m trainer train-embedding ...` runs this very
loop on several GPUs.
"""
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from common import events
from common.errors import UserError
from common.events import Status
from trainer.embeddings.library import (Embedding, load_embeddings_dir, load_optimizer_state, save_embedding,
                                        save_optimizer_state, write_image_embedding)
from trainer.locks import training_lock
from trainer.models.precision import training_precision, weights_note
from trainer.models.sdxl import batch_time_ids, prompt_encoder_for, size_time_ids, unet_inputs
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
from trainer.training.validation import VALIDATION_CSV, read_rows, start_validation
from trainer.training.vector_health import VectorHealth, init_norms_from

LOSS_CSV = "textual_inversion_loss.csv"


class TrainableVectors(torch.nn.Module):
    """The embedding's vectors as the one parameter that trains (a module so accelerate/DDP can wrap it)."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.vectors = torch.nn.Parameter(vectors.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.vectors


def find_embedding(embeddings_dir, name: str, width: int, clip_l_width: int | None = None):
    """(the embedding called `name` in the embeddings folder, the file to save it back to). Found as the
    embeddings list finds it (recursively, any format); a file the model cannot use is refused with its reason.
    An embedding read from an image is saved back as `<name>.pt` beside it (SDXL: `<name>.safetensors`)."""
    loaded, skipped = load_embeddings_dir(embeddings_dir, width, clip_l_width=clip_l_width)
    if name not in loaded:
        if name in skipped:
            raise UserError(f"Embedding '{name}' cannot be trained on this model: {skipped[name][1]}.")
        raise UserError(f"Embedding '{name}' was not found in {embeddings_dir}; create it first.")
    embedding = loaded[name]
    path = Path(embedding.filename)
    if path.suffix.lower() not in (".pt", ".bin", ".safetensors"):
        path = path.with_name(f"{name}.safetensors" if embedding.is_sdxl else f"{name}.pt")
    return embedding, path


def train_embedding(model, cfg: TrainConfig, embeddings_dir, *args, **kwargs) -> TrainResult:
    """Train `cfg.name` (arguments as `_train_embedding`) holding its training lock, so no Create/Overwrite and
    no second trainer, in this process or another, writes the embedding meanwhile."""
    with training_lock(embeddings_dir, cfg.name, "embedding", kwargs.get("accelerator")):
        return _train_embedding(model, cfg, embeddings_dir, *args, **kwargs)


def _train_embedding(model, cfg: TrainConfig, embeddings_dir, templates_dir, other_embeddings=None,
                     progress=None, should_stop=None, accelerator=None) -> TrainResult:
    """Train `cfg.name` (settings checked by `cfg.validate()`, as the Workspace and the CLI do) on `cfg.dataset`.
    `progress(event)` receives the `common.events` of the run; `should_stop()` is checked before every
    micro-batch (Interrupt)."""
    emit = progress or events.ignore
    should_stop = should_stop or (lambda: False)

    # 1. Settings and files ---------------------------------------------------------------------------------
    template_path = resolve_template(templates_dir, cfg.template)
    template_lines = read_template(template_path)
    if not any("[name]" in line for line in template_lines):
        emit(events.Warning(f"Prompt template {template_path.name} has no [name]: the embedding never appears "
                            "in the training prompts, so it will not learn anything."))
    embedding, embedding_path = find_embedding(embeddings_dir, cfg.name, model.text_width, model.clip_l_width)
    start_step = embedding.step or 0
    lr_schedule, clip_schedule = cfg.schedules(start_step, "embedding")
    accelerator = accelerator or make_accelerator(model.device.type, cfg.grad_accum, cfg.mixed_precision)
    is_main = accelerator.is_main_process
    seed, rng, generator = seeded_randomness(cfg.seed, accelerator)
    emit(events.Message(weights_note(model, accelerator, cfg.gradient_checkpointing)))

    # 2. Data: each image VAE-encoded once (or read from the latent cache); some held out for validation ------
    dataset = dataset_from_settings(model, cfg, seed, emit, should_stop)
    validation_samples = dataset.samples
    if cfg.validate_every and cfg.validation_split:
        validation_samples = dataset.hold_out(cfg.validation_split)
        held, kept = len(validation_samples), len(dataset)
        emit(events.Message(f"Validation: {held} of {held + kept} images held out, {kept} left to train on."))
    log_dir = None
    if is_main and cfg.log_dir:
        log_dir = prepare_log_dir(cfg, ("embeddings", "images", "image_embeddings"), dict(
            seed=seed, start_step=start_step, template_path=str(template_path), model_hash=model.checkpoint_hash))

    # 3. What trains: the vectors, spliced into the prompts by the encoder; AdamW, resumed when state was saved -
    trainable = TrainableVectors(embedding.vectors).to(accelerator.device)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=lr_schedule.value, weight_decay=0.0)
    saved_state = load_optimizer_state(embedding_path, embedding.vectors) if cfg.save_optimizer_state else None
    if saved_state is not None:
        try:
            optimizer.load_state_dict(saved_state)
            emit(events.Message("Resumed the optimizer state saved beside the embedding."))
        except (ValueError, KeyError, RuntimeError):
            emit(events.Message("Saved optimizer state does not match; starting it fresh."))
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    vectors = accelerator.unwrap_model(trainable).vectors  # the parameter itself: clipped, checked, saved
    others = {k: v for k, v in (other_embeddings or {}).items() if k != cfg.name}
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = prompt_encoder_for(model, {**others, cfg.name: vectors})

    def predict(noisy, timesteps, prompts, batch=None):
        """The UNet's prediction; on SDXL with each image's size/crop micro-conditioning (a training batch's, or
        for the validation set's items, uncropped images of the size the latents decode to)."""
        with accelerator.autocast():
            sizes = None
            if model.is_sdxl:
                sizes = (batch_time_ids(batch, noisy, model.vae_scale_factor) if batch is not None else
                         size_time_ids(noisy.shape[-2] * model.vae_scale_factor,
                                       noisy.shape[-1] * model.vae_scale_factor, noisy.shape[0], noisy.device))
            return model.unet(noisy, timesteps, **unet_inputs(encoder(prompts), sizes)).sample

    def as_embedding(state, step):
        return Embedding(cfg.name, state.detach().float().cpu().clone(), step, model.checkpoint_hash,
                         model.name, clip_l_width=model.clip_l_width)

    # 4. Validation: a fixed set's loss, vector health, the best copy, early stop (trainer.training.validation) -
    earlier_checks = read_rows(log_dir / VALIDATION_CSV) if log_dir else []  # a resumed run's, for the init norms
    health = VectorHealth([text_encoder.get_input_embeddings().weight
                           for text_encoder in (model.text_encoder, model.text_encoder_2) if text_encoder is not None],
                          *init_norms_from(earlier_checks, embedding.vectors, start_step))
    validation = start_validation(
        cfg, validation_samples, template_lines, noise_scheduler, model.checkpoint_hash, predict,
        describe=health, save_best=lambda state, step, path: save_embedding(as_embedding(state, step), path),
        log_dir=log_dir, best_file=log_dir / "embeddings" / f"{cfg.name}-best.pt" if log_dir else None, emit=emit,
        start_step=start_step, accelerator=accelerator)

    # 5. The step loop ---------------------------------------------------------------------------------------
    history = read_loss_history(log_dir.parent.parent, cfg.name, LOSS_CSV, start_step) if log_dir else []
    checks = validation.history(log_dir.parent.parent, cfg.name) if validation is not None and log_dir else []
    loss_csv = LossCsv(log_dir / LOSS_CSV if log_dir else None, cfg.loss_csv_every)
    batches = batch_stream(dataset, cfg.batch_size, rng, generator, accelerator)
    epoch_len = optimizer_steps_per_epoch(dataset, cfg.batch_size, cfg.grad_accum, accelerator.num_processes)
    step, last_good = start_step, vectors.detach().clone()  # last_good: after the last finite step, what is saved
    status, error = Status.FINISHED, None
    started = time.perf_counter()
    with training_precision(model, accelerator, cfg.gradient_checkpointing):  # frozen weights' dtype, checkpointing
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
                    prompts = [build_prompt(template_lines, cfg.name, words, rng, cfg.shuffle_tags, cfg.tag_dropout)
                               for words in batch.filewords]
                    with accelerator.accumulate(trainable):
                        # through the (possibly DDP-wrapped) module, so gradients are synchronised; a prompt without
                        # the embedding (a template line with no [name]) still gives the vectors a (zero) gradient,
                        # so backward works and every data-parallel process joins the gradient all-reduce
                        zero = 0.0 * trainable().sum()
                        loss = denoising_loss(noise_scheduler, batch, generator, accelerator.device,
                                              lambda noisy, timesteps: predict(noisy, timesteps, prompts, batch)) + zero
                        if not torch.isfinite(loss):
                            status = Status.NAN
                            break
                        accelerator.backward(loss)  # then clip, and step (accelerate skips it between micro-batches)
                        if accelerator.sync_gradients and clip_schedule is not None:
                            clip_value = clip_schedule.advance(step) or clip_schedule.value
                            if cfg.clip_grad_mode == "value":
                                accelerator.clip_grad_value_([vectors], clip_value)
                            else:
                                accelerator.clip_grad_norm_([vectors], clip_value)
                        optimizer.step()
                        optimizer.zero_grad(set_to_none=True)
                    loss_total += loss.item() / cfg.grad_accum
                if status != Status.FINISHED:  # interrupted or NaN mid-step: the last good state stays
                    optimizer.zero_grad(set_to_none=True)
                    break
                if not torch.isfinite(vectors).all():
                    status = Status.NAN
                    break
                step += 1
                last_good = vectors.detach().clone()
                elapsed = time.perf_counter() - started
                epoch, epoch_step = epoch_of(step, epoch_len)
                emit(events.Step(step, cfg.steps, loss_total, lr, epoch, epoch_step, epoch_len, prompts[0],
                                 (step - start_step) / elapsed if elapsed > 0 else 0.0))
                if log_dir is None:
                    continue  # a process that writes no files
                loss_csv.write(step, epoch, epoch_step, loss_total, lr)
                if cfg.save_every and step % cfg.save_every == 0:
                    suffix = ".safetensors" if model.is_sdxl else ".pt"
                    copy = save_embedding(as_embedding(last_good, step),
                                          log_dir / "embeddings" / f"{cfg.name}-{step}{suffix}")
                    emit(events.Saved(str(copy), step))
                if cfg.preview_every and step % cfg.preview_every == 0:
                    make_preview(model, cfg, as_embedding(last_good, step), others, prompts[0], log_dir, emit)
            if validation is not None and status == Status.FINISHED and not validation.stop_reason:
                validation.check_last(step, last_good)
        except Exception as e:  # noqa: BLE001 - told truthfully below, after saving the last good vectors
            status, error = Status.FAILED, e
        finally:
            loss_csv.close()

    # 6. Save what was learned -------------------------------------------------------------------------------
    if is_main and step > start_step:
        save_embedding(as_embedding(last_good, step), embedding_path)
        if cfg.save_optimizer_state and status in (Status.FINISHED, Status.INTERRUPTED):
            save_optimizer_state(embedding_path, last_good, optimizer.state_dict())
    in_sync = data_parallel_sentence(accelerator, last_good.flatten(), "vectors")
    if in_sync:
        emit(events.Message(in_sync))
    accelerator.wait_for_everyone()
    saved = f"Embedding saved to {embedding_path}." if step > start_step else "No steps were made, nothing saved."
    message = closing_sentence(status, step, saved, error,
                               stopped_early=validation.stop_reason if validation is not None else None)
    message += validation.summary() if validation is not None else ""
    emit(events.Ended(status, message, step))
    return TrainResult(status, step, message, str(embedding_path) if is_main else None,
                       str(log_dir) if log_dir else None)


def make_preview(model, cfg: TrainConfig, embedding: Embedding, others, caption: str, log_dir: Path, emit):
    """Render a preview with the current vectors; write images/ (and image_embeddings/) files."""
    params = preview_params(cfg, caption)
    image, infotext, seed = txt2img(model, params, {**others, embedding.name: embedding.vectors})[0]
    path = log_dir / "images" / f"{embedding.name}-{embedding.step}.png"
    save_png(image, path, infotext)
    files = [str(path)]
    if cfg.png_embedding:
        chunk_path = log_dir / "image_embeddings" / f"{embedding.name}-{embedding.step}.png"
        write_image_embedding(embedding, image, chunk_path)
        files.append(str(chunk_path))
    emit(events.Preview(embedding.step, image, params.prompt, seed, tuple(files)))
