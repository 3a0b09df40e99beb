"""Train a textual-inversion embedding: only its vectors learn; text encoder, UNet and VAE stay frozen.

Reads top to bottom like a nanoGPT loop: settings -> data (latents cached once) -> optimizer -> loop ->
save. Device placement, mixed precision, gradient accumulation and data parallelism go through accelerate,
so `accelerate launch -m trainer train-embedding ...` runs this very loop on several GPUs.
"""
import random
import time
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from .conditioning import PromptEncoder
from .dataset import build_prompt, read_template
from .embeddings import (Embedding, EmbeddingReadError, load_optimizer_state, read_embedding_file,
                         save_embedding, save_optimizer_state, write_image_embedding)
from .errors import UserError
from .sampling import save_png_with_infotext, txt2img
from .schedule import parse_schedule
from .train_config import TrainConfig
from .training_common import (LossCsv, TrainResult, batch_stream, build_dataset, denoising_loss, end_message,
                              make_accelerator, prepare_log_dir, preview_params, resolve_template)


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

    dataset = build_dataset(model, cfg, seed, emit, should_stop, warnings)

    log_dir = None
    if is_main and cfg.log_dir:
        log_dir = prepare_log_dir(cfg, ("embeddings", "images", "image_embeddings"), dict(
            seed=seed, start_step=start_step, template_path=str(template_path), model_hash=model.checkpoint_hash))

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
        def predict(noisy, timesteps):
            with accelerator.autocast():
                return model.unet(noisy, timesteps, encoder(prompts)).sample

        vectors = trainable()  # through the (possibly DDP-wrapped) module, so gradients are synchronised
        # A prompt without the embedding (a template line with no [name]) still gives the vectors a (zero)
        # gradient, so backward works and every data-parallel process joins the gradient all-reduce.
        return denoising_loss(noise_scheduler, batch, generator, accelerator.device, predict) + 0.0 * vectors.sum()

    def current_embedding(vectors, step):
        return Embedding(cfg.name, vectors.detach().float().cpu().clone(), step, model.checkpoint_hash,
                         model.name)

    # --- loop --------------------------------------------------------------------------------------------
    loss_csv = LossCsv(log_dir / "textual_inversion_loss.csv", cfg.loss_csv_every) if log_dir is not None else None

    step = start_step
    last_good = raw_trainable.vectors.detach().clone()
    status, error = "finished", None
    stream = batch_stream(dataset, cfg.batch_size, rng, generator, accelerator)
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
            if loss_csv is not None:
                loss_csv.write(step, epoch, epoch_step, loss_total, lr)
            if log_dir is not None and cfg.save_every and step % cfg.save_every == 0:
                path = log_dir / "embeddings" / f"{cfg.name}-{step}.pt"
                save_embedding(current_embedding(last_good, step), path)
                emit({"type": "saved", "path": str(path), "step": step})
            if log_dir is not None and cfg.preview_every and step % cfg.preview_every == 0:
                make_preview(model, cfg, current_embedding(last_good, step), others, last_prompt, log_dir, emit)
    except Exception as e:  # noqa: BLE001 - reported truthfully below, after saving the last good vectors
        status, error = "failed", e
    finally:
        if loss_csv is not None:
            loss_csv.close()

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
    message = end_message(status, step, saved, error)
    emit({"type": "end", "status": status, "message": message, "step": step})
    return TrainResult(status, step, message, str(final_path) if final_path else None,
                       str(log_dir) if log_dir else None, warnings)


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
