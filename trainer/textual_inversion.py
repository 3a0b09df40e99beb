"""Train a textual-inversion embedding: only its vectors learn; text encoder, UNet and VAE stay frozen.

Reads top to bottom like a nanoGPT loop: settings -> data (latents cached once) -> optimizer -> loop ->
save. Device placement, mixed precision, gradient accumulation and data parallelism go through accelerate,
so `accelerate launch -m trainer train-embedding ...` runs this very loop on several GPUs.
"""
import csv
import datetime
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from diffusers import DDPMScheduler

from .conditioning import PromptEncoder
from .dataset import TextualInversionDataset, build_prompt, read_template
from .embeddings import (Embedding, EmbeddingReadError, load_optimizer_state, read_embedding_file,
                         save_embedding, save_optimizer_state, write_image_embedding)
from .errors import UserError
from .files import atomic_write_text
from .sampling import Txt2ImgParams, save_png_with_infotext, txt2img, validate_params
from .schedule import parse_schedule
from .train_config import PreviewSettings, TrainConfig


@dataclass
class TrainResult:
    status: str  # "finished" | "interrupted" | "failed" | "nan"
    step: int
    message: str
    embedding_path: str | None = None
    log_dir: str | None = None
    warnings: list = field(default_factory=list)


class TrainableVectors(torch.nn.Module):
    """The embedding's vectors as the one parameter that trains (a module so accelerate/DDP can wrap it)."""

    def __init__(self, vectors: torch.Tensor):
        super().__init__()
        self.vectors = torch.nn.Parameter(vectors.detach().clone().float())

    def forward(self) -> torch.Tensor:
        return self.vectors


def find_embedding_file(embeddings_dir, name: str) -> Path:
    for suffix in (".pt", ".safetensors", ".bin"):
        path = Path(embeddings_dir) / f"{name}{suffix}"
        if path.is_file():
            return path
    raise UserError(f"Embedding '{name}' was not found in {embeddings_dir}; create it first.")


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


def train_embedding(model, cfg: TrainConfig, embeddings_dir, templates_dir, other_embeddings=None,
                    progress=None, should_stop=None, accelerator=None) -> TrainResult:
    """Train `cfg.name` on `cfg.dataset`. `progress(event: dict)` receives step/preview/saved/message
    events; `should_stop()` is checked before every micro-batch (Interrupt)."""
    emit = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    cfg.validate()
    warnings = []

    # --- settings and files ---------------------------------------------------------------------------
    template_path = resolve_template(templates_dir, cfg.template)
    template_lines = read_template(template_path)
    if not any("[name]" in line for line in template_lines):
        warnings.append(f"Prompt template {template_path.name} has no [name]: the embedding never appears "
                        "in the training prompts, so it will not learn anything.")
    embedding_path = find_embedding_file(embeddings_dir, cfg.name)
    try:
        embedding = read_embedding_file(embedding_path)
    except EmbeddingReadError as e:
        raise UserError(f"Embedding file {embedding_path} cannot be used: {e}.") from None
    if embedding.shape != model.text_width:
        raise UserError(f"Embedding '{cfg.name}' has width {embedding.shape} but the model needs "
                        f"{model.text_width}; it was made for another model.")
    start_step = embedding.step or 0
    lr_schedule = parse_schedule(cfg.learn_rate, cfg.steps, start_step, "learning rate")
    clip_schedule = None
    if cfg.clip_grad_mode != "disabled":
        clip_schedule = parse_schedule(cfg.clip_grad_value, cfg.steps, start_step, "gradient clipping")
    if cfg.preview_every:
        preview_params(cfg, "a caption")  # bad preview settings are a sentence now, not a failure at step N
    if start_step >= cfg.steps:
        raise UserError(f"Embedding '{cfg.name}' already has {start_step} steps, not below max steps "
                        f"{cfg.steps}; raise Max steps to train further.")

    accelerator = accelerator or make_accelerator(model.device.type, cfg.grad_accum)
    is_main = accelerator.is_main_process
    seed = cfg.seed if cfg.seed is not None else random.randrange(2**31)
    rng = random.Random(seed + accelerator.process_index)
    generator = torch.Generator().manual_seed(seed + accelerator.process_index)
    for message in warnings:
        emit({"type": "message", "text": "Warning: " + message})

    emit({"type": "message", "text": f"Preparing dataset from {cfg.dataset}..."})
    dataset = TextualInversionDataset(
        model, cfg.dataset, cfg.width, cfg.height, resize=not cfg.no_resize,
        latent_sampling=cfg.latent_sampling, use_alpha_weight=cfg.alpha_weight, word_regex=cfg.word_regex,
        join_string=cfg.join_string, seed=seed, progress=emit, should_stop=should_stop)
    for file_name, reason in dataset.report.skipped:
        warnings.append(f"Skipped {file_name}: {reason}.")
    emit({"type": "message", "text": f"Dataset: {len(dataset)} images, {len(dataset.report.skipped)} skipped."})

    log_dir = None
    if is_main and cfg.log_dir:
        log_dir = Path(cfg.log_dir) / datetime.date.today().isoformat() / cfg.name
        for sub in ("embeddings", "images", "image_embeddings"):
            (log_dir / sub).mkdir(parents=True, exist_ok=True)
        stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
        settings = dict(cfg.to_json(), seed=seed, start_step=start_step, template_path=str(template_path),
                        model_hash=model.checkpoint_hash)
        atomic_write_text(log_dir / f"settings-{stamp}.json", json.dumps(settings, indent=2))

    # --- model and optimizer ---------------------------------------------------------------------------
    trainable = TrainableVectors(embedding.vectors).to(accelerator.device)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=lr_schedule.value, weight_decay=0.0)
    if cfg.save_optimizer_state:
        state = load_optimizer_state(embedding_path, embedding.vectors)
        if state is not None:
            try:
                optimizer.load_state_dict(state)
                emit({"type": "message", "text": "Resumed the optimizer state saved beside the embedding."})
            except (ValueError, KeyError, RuntimeError):
                emit({"type": "message", "text": "Saved optimizer state does not match; starting it fresh."})
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    raw_trainable = accelerator.unwrap_model(trainable)
    others = {k: v for k, v in (other_embeddings or {}).items() if k != cfg.name}
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, {**others, cfg.name: raw_trainable.vectors})

    def compute_loss(batch, prompts):
        latents = batch.latents.to(accelerator.device)
        noise = torch.randn(latents.shape, generator=generator).to(latents.device)
        timesteps = torch.randint(0, noise_scheduler.config.num_train_timesteps, (latents.shape[0],),
                                  generator=generator).to(latents.device)
        noisy = noise_scheduler.add_noise(latents, noise, timesteps)
        vectors = trainable()  # through the (possibly DDP-wrapped) module, so gradients are synchronised
        with accelerator.autocast():
            cond = encoder(prompts)
            prediction = model.unet(noisy, timesteps, cond).sample
        if noise_scheduler.config.prediction_type == "v_prediction":
            target = noise_scheduler.get_velocity(latents, noise, timesteps)
        else:
            target = noise
        loss = F.mse_loss(prediction.float(), target.float(), reduction="none")
        if batch.weights is not None:
            loss = loss * batch.weights.to(loss.device)
        # A prompt without the embedding (a template line with no [name]) still gives the vectors a (zero)
        # gradient, so backward works and every data-parallel process joins the gradient all-reduce.
        return loss.mean() + 0.0 * vectors.sum()

    def batch_stream():
        epoch = 0
        while True:
            for epoch_step, batch in enumerate(dataset.epoch(cfg.batch_size, rng, generator,
                                                             accelerator.process_index,
                                                             accelerator.num_processes)):
                yield epoch, epoch_step, batch
            epoch += 1

    def current_embedding(vectors, step):
        return Embedding(cfg.name, vectors.detach().float().cpu().clone(), step, model.checkpoint_hash,
                         model.name)

    # --- loop --------------------------------------------------------------------------------------------
    csv_file = csv_writer = None
    if log_dir is not None:
        csv_path = log_dir / "textual_inversion_loss.csv"
        new_file = not csv_path.exists()
        csv_file = open(csv_path, "a", newline="", encoding="utf-8")
        csv_writer = csv.writer(csv_file)
        if new_file:
            csv_writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])

    step = start_step
    last_good = raw_trainable.vectors.detach().clone()
    status, error = "finished", None
    stream = batch_stream()
    started = time.perf_counter()
    last_prompt = ""
    emit({"type": "start", "step": step, "max_steps": cfg.steps, "dataset_size": len(dataset)})
    try:
        while step < cfg.steps:
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
                epoch, epoch_step, batch = next(stream)
                prompts = [build_prompt(template_lines, cfg.name, words, rng, cfg.shuffle_tags, cfg.tag_dropout)
                           for words in batch.filewords]
                last_prompt = prompts[0]
                with accelerator.accumulate(trainable):
                    loss = compute_loss(batch, prompts)
                    if not torch.isfinite(loss):
                        status = "nan"
                        break
                    accelerator.backward(loss)
                    if accelerator.sync_gradients and clip_schedule is not None:
                        clip_value = clip_schedule.value_at(step) or clip_schedule.value
                        if cfg.clip_grad_mode == "value":
                            accelerator.clip_grad_value_(trainable.parameters(), clip_value)
                        else:
                            accelerator.clip_grad_norm_(trainable.parameters(), clip_value)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_total += loss.item() / cfg.grad_accum
            if status != "finished":
                optimizer.zero_grad(set_to_none=True)
                break
            if not torch.isfinite(raw_trainable.vectors).all():
                status = "nan"
                break
            step += 1
            last_good = raw_trainable.vectors.detach().clone()
            elapsed = time.perf_counter() - started
            emit({"type": "step", "step": step, "max_steps": cfg.steps, "loss": loss_total, "lr": lr,
                  "epoch": epoch, "epoch_step": epoch_step, "prompt": last_prompt,
                  "it_per_s": (step - start_step) / elapsed if elapsed > 0 else 0.0})
            if not is_main:
                continue
            if csv_writer is not None:
                csv_writer.writerow([step, epoch, epoch_step, f"{loss_total:.7f}", lr])
                if cfg.loss_csv_every and step % cfg.loss_csv_every == 0:
                    csv_file.flush()
            if log_dir is not None and cfg.save_every and step % cfg.save_every == 0:
                path = log_dir / "embeddings" / f"{cfg.name}-{step}.pt"
                save_embedding(current_embedding(last_good, step), path)
                emit({"type": "saved", "path": str(path), "step": step})
            if log_dir is not None and cfg.preview_every and step % cfg.preview_every == 0:
                make_preview(model, cfg, current_embedding(last_good, step), others, last_prompt, log_dir, emit)
    except Exception as e:  # noqa: BLE001 - reported truthfully below, after saving the last good vectors
        status, error = "failed", e
    finally:
        if csv_file is not None:
            csv_file.close()

    # --- save what was learned -----------------------------------------------------------------------------
    final_path = None
    if is_main:
        final_path = Path(embeddings_dir) / f"{cfg.name}.pt"
        if step > start_step:
            save_embedding(current_embedding(last_good, step), final_path)
            if cfg.save_optimizer_state and status in ("finished", "interrupted"):
                save_optimizer_state(final_path, last_good, optimizer.state_dict())
    if accelerator.num_processes > 1:  # data parallel: every process must hold the very same vectors
        gathered = accelerator.gather(last_good.to(accelerator.device)[None]).cpu()
        in_sync = all(torch.equal(gathered[0], other) for other in gathered[1:])
        emit({"type": "message", "text": f"Data parallel over {accelerator.num_processes} processes; vectors "
              + ("identical on every process." if in_sync else "DIFFER between processes.")})
    accelerator.wait_for_everyone()
    saved = f"Embedding saved to {final_path}." if step > start_step else "No steps were made, nothing saved."
    if status == "finished":
        message = f"Training finished at {step} steps. {saved}"
    elif status == "interrupted":
        message = f"Training interrupted at {step} steps. {saved}"
    elif status == "nan":
        message = (f"Training stopped at step {step + 1}: the loss became NaN or infinite (try a lower "
                   f"learning rate). The last finite embedding, from step {step}, was kept. {saved}")
    else:
        message = f"Training failed at step {step + 1}: {error.__class__.__name__}: {error}. {saved}"
    emit({"type": "end", "status": status, "message": message, "step": step})
    return TrainResult(status, step, message, str(final_path) if final_path else None,
                       str(log_dir) if log_dir else None, warnings)


def preview_params(cfg: TrainConfig, caption: str) -> Txt2ImgParams:
    """The reference's default preview (the batch's first caption, 20 steps, CFG 7, random seed, training
    size) unless the user asked for the txt2img tab's parameters."""
    p = cfg.preview or PreviewSettings()
    return validate_params(Txt2ImgParams(
        prompt=p.prompt or caption, negative_prompt=p.negative_prompt, sampler=p.sampler, steps=p.steps,
        cfg_scale=p.cfg_scale, seed=p.seed, width=p.width or cfg.width, height=p.height or cfg.height))


def make_preview(model, cfg: TrainConfig, embedding: Embedding, others, caption: str, log_dir: Path, emit):
    """Render a preview with the current vectors; write images/ (and image_embeddings/) files."""
    params = preview_params(cfg, caption)
    image, infotext, seed = txt2img(model, params, {**others, embedding.name: embedding.vectors})[0]
    path = log_dir / "images" / f"{embedding.name}-{embedding.step}.png"
    save_png_with_infotext(image, infotext, path)
    files = [str(path)]
    if cfg.png_embedding:
        chunk_path = log_dir / "image_embeddings" / f"{embedding.name}-{embedding.step}.png"
        write_image_embedding(embedding, image, chunk_path)
        files.append(str(chunk_path))
    emit({"type": "preview", "step": embedding.step, "image": image, "prompt": params.prompt,
          "seed": seed, "files": files})
