"""Train a textual-inversion embedding: only its vectors learn; text encoder, UNet and VAE stay frozen.

Reads top to bottom: settings -> data (latents cached once) -> the trainable vectors, their optimizer and loss ->
the shared optimizer-step loop (`training_common.run_training_loop`) -> save. On SDXL the vectors are both
encoders' (clip_l and clip_g side by side) and the UNet also gets the pooled text and each image's size/crop
(`trainer.models.sdxl`). Device placement, mixed precision, gradient accumulation and data parallelism go through accelerate,
so `accelerate launch -m trainer train-embedding ...` runs this very loop on several GPUs.
"""
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trainer.training.dataset import read_template
from trainer.embeddings.library import (Embedding, load_embeddings_dir, load_optimizer_state, save_embedding, save_optimizer_state,
                         write_image_embedding)
from common.errors import UserError
from trainer.locks import training_lock
from trainer.models.precision import training_precision
from trainer.sampling.txt2img import save_png_with_infotext, txt2img
from trainer.models.sdxl import batch_time_ids, prompt_encoder_for, size_time_ids, unet_inputs
from trainer.training.config import TrainConfig
from trainer.training.common import (LoopParts, TrainResult, denoising_loss, end_message, prepare_log_dir, preview_params,
                              report_data_parallel, resolve_template, restore_optimizer_state, run_training_loop,
                              start_run)
from trainer.training.validation import read_rows, start_validation
from trainer.training.vector_health import VectorHealth, init_norms_from


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
    embedding, embedding_path = find_embedding(embeddings_dir, cfg.name, model.text_width, model.clip_l_width)
    start_step = embedding.step or 0
    run = start_run(model, cfg, start_step, "Embedding", accelerator, warnings, emit, should_stop)
    accelerator, seed, rng, generator = run.accelerator, run.seed, run.rng, run.generator
    lr_schedule, clip_schedule, dataset = run.lr_schedule, run.clip_schedule, run.dataset
    is_main = accelerator.is_main_process

    log_dir = None
    if is_main and cfg.log_dir:
        log_dir = prepare_log_dir(cfg, ("embeddings", "images", "image_embeddings"), dict(
            seed=seed, start_step=start_step, template_path=str(template_path), model_hash=model.checkpoint_hash))

    # --- model and optimizer ---------------------------------------------------------------------------
    trainable = TrainableVectors(embedding.vectors).to(accelerator.device)
    optimizer = torch.optim.AdamW(trainable.parameters(), lr=lr_schedule.value, weight_decay=0.0)
    if cfg.save_optimizer_state:
        state = load_optimizer_state(embedding_path, embedding.vectors)
        restore_optimizer_state(optimizer, state, emit, "embedding")
    trainable, optimizer = accelerator.prepare(trainable, optimizer)
    raw_trainable = accelerator.unwrap_model(trainable)
    others = {k: v for k, v in (other_embeddings or {}).items() if k != cfg.name}
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = prompt_encoder_for(model, {**others, cfg.name: raw_trainable.vectors})

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

    def compute_loss(batch, prompts):
        vectors = trainable()  # through the (possibly DDP-wrapped) module, so gradients are synchronised
        # A prompt without the embedding (a template line with no [name]) still gives the vectors a (zero)
        # gradient, so backward works and every data-parallel process joins the gradient all-reduce.
        return denoising_loss(noise_scheduler, batch, generator, accelerator.device,
                              lambda noisy, timesteps: predict(noisy, timesteps, prompts, batch)) + 0.0 * vectors.sum()

    def current_embedding(vectors, step):
        return Embedding(cfg.name, vectors.detach().float().cpu().clone(), step, model.checkpoint_hash,
                         model.name, clip_l_width=model.clip_l_width)

    def save_copy(vectors, step):
        suffix = ".safetensors" if model.is_sdxl else ".pt"
        return save_embedding(current_embedding(vectors, step), log_dir / "embeddings" / f"{cfg.name}-{step}{suffix}")

    def preview(vectors, step, caption):
        make_preview(model, cfg, current_embedding(vectors, step), others, caption, log_dir, emit)

    # --- validation: a fixed set's loss, vector health, the best copy, early stop (trainer.training.validation) ------
    earlier_checks = read_rows(log_dir / "validation.csv") if log_dir else []  # a resumed run's, for the init norms
    health = VectorHealth([encoder.get_input_embeddings().weight for encoder in (model.text_encoder, model.text_encoder_2)
                           if encoder is not None],
                          *init_norms_from(earlier_checks, embedding.vectors, start_step))
    validation = start_validation(
        cfg, run.validation_samples, template_lines, noise_scheduler, model.checkpoint_hash, predict,
        describe=health, save_best=lambda vectors, step, path: save_embedding(current_embedding(vectors, step), path),
        log_dir=log_dir, best_file=log_dir / "embeddings" / f"{cfg.name}-best.pt" if log_dir else None, emit=emit,
        start_step=start_step, accelerator=accelerator, warnings=warnings)

    # --- loop --------------------------------------------------------------------------------------------
    parts = LoopParts(trainable, [raw_trainable.vectors], compute_loss,
                      snapshot=lambda: raw_trainable.vectors.detach().clone(), save_copy=save_copy, preview=preview)
    with training_precision(model, accelerator, run.checkpointing):  # frozen weights' dtype, checkpointing
        outcome = run_training_loop(
            cfg, parts, accelerator=accelerator, optimizer=optimizer, dataset=dataset, template_lines=template_lines,
            rng=rng, generator=generator, lr_schedule=lr_schedule, clip_schedule=clip_schedule,
            start_step=start_step, log_dir=log_dir, csv_name="textual_inversion_loss.csv", emit=emit,
            should_stop=should_stop, validation=validation)
    status, step, last_good = outcome.status, outcome.step, outcome.last_good

    # --- save what was learned -----------------------------------------------------------------------------
    final_path = None
    if is_main:
        final_path = embedding_path
        if step > start_step:
            save_embedding(current_embedding(last_good, step), final_path)
            if cfg.save_optimizer_state and status in ("finished", "interrupted"):
                save_optimizer_state(final_path, last_good, optimizer.state_dict())
    report_data_parallel(accelerator, last_good.flatten(), emit, "vectors")
    accelerator.wait_for_everyone()
    saved = f"Embedding saved to {final_path}." if step > start_step else "No steps were made, nothing saved."
    message = end_message(status, step, saved, outcome.error, stopped_early=outcome.stopped_early)
    message += validation.summary() if validation is not None else ""
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
