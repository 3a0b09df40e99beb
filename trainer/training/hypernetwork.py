"""Train a hypernetwork: only its MLPs learn; text encoder, UNet and VAE stay frozen.

The same shape as `trainer.training.textual_inversion` (settings -> data -> optimizer -> loop -> save), the same events,
the same job, chart, previews and Interrupt. What differs:

* the hypernetwork acts inside the UNet (`apply_hypernetworks` around each UNet call), with dropout on while
  training and multiplier 1, as in the reference;
* the text encoder's output does not depend on it, so when tags are neither shuffled nor dropped each distinct
  prompt is encoded once and kept;
* AdamW with the reference's weight decay 0.01, default learning rate "0.00001";
* log files `<log dir>/<date>/<name>/hypernetworks/<name>-<step>.pt`, `images/`, `hypernetwork_loss.csv`.

Data parallel (`accelerate launch`): the hypernetwork runs inside the UNet rather than through a wrapped
module's forward, so gradients are averaged over the processes explicitly before each optimizer step.
"""
from collections import ChainMap
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from trainer.prompts.conditioning import PromptEncoder
from trainer.training.dataset import read_template
from common.errors import UserError
from trainer.locks import training_lock
from trainer.hypernetworks.network import (HypernetworkFolder, HypernetworkReadError, context_widths, list_hypernetworks,
                           load_optimizer_state, read_hypernetwork, save_hypernetwork, save_optimizer_state)
from trainer.hypernetworks.attention import apply_hypernetworks, extract_hypernetwork_tags
from trainer.models.precision import training_precision
from trainer.sampling.txt2img import save_png_with_infotext, txt2img
from trainer.models.sdxl import refuse_sdxl_hypernetwork_training
from trainer.training.config import TrainConfig
from trainer.training.common import (LoopParts, TrainResult, denoising_loss, end_message, prepare_log_dir, preview_params,
                              report_data_parallel, resolve_template, restore_optimizer_state, run_training_loop,
                              start_run)
from trainer.training.validation import start_validation

DEFAULT_LEARN_RATE = "0.00001"
WEIGHT_DECAY = 0.01  # torch's AdamW default, which the reference uses
MAX_CACHED_PROMPTS = 2048


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
    """Train the hypernetwork `cfg.name` (a file in `hypernetwork_dir`) on `cfg.dataset`. `embeddings` (name ->
    vectors) may appear in the prompts. Events and interruption as `train_embedding`."""
    emit = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    if not cfg.name:
        raise UserError("Choose a hypernetwork to train (create one in the Create hypernetwork tab).")
    refuse_sdxl_hypernetwork_training(model)
    cfg.validate()
    warnings = []

    # --- settings and files ---------------------------------------------------------------------------
    template_path = resolve_template(templates_dir, cfg.template)
    template_lines = read_template(template_path)
    path = find_hypernetwork_file(hypernetwork_dir, cfg.name)
    try:
        hypernetwork = read_hypernetwork(path)
    except HypernetworkReadError as e:
        raise UserError(f"Hypernetwork file {path} cannot be used: {e}.") from None
    widths = context_widths(model.unet)
    used = [size for size in hypernetwork.sizes if size in widths]
    if not used:
        raise UserError(f"Hypernetwork '{cfg.name}' has modules for widths {hypernetwork.sizes}, but this model's "
                        f"attention uses {widths}: it would not learn anything (made for another model?).")
    unused = [size for size in hypernetwork.sizes if size not in widths]
    if unused:
        warnings.append(f"Modules {unused} of '{cfg.name}' match no attention width of this model "
                        f"({widths}); they stay as they are.")
    start_step = hypernetwork.step or 0
    if cfg.gradient_checkpointing:  # its attention processors follow the calling thread; recomputation may not
        warnings.append("Gradient checkpointing applies to embedding training; hypernetworks train without it.")
    run = start_run(model, cfg, start_step, "Hypernetwork", accelerator, warnings, emit, should_stop,
                    checkpointing=False)
    accelerator, seed, rng, generator = run.accelerator, run.seed, run.rng, run.generator
    lr_schedule, clip_schedule, dataset = run.lr_schedule, run.clip_schedule, run.dataset
    is_main = accelerator.is_main_process

    log_dir = None
    if is_main and cfg.log_dir:
        structure = dict(sizes=hypernetwork.sizes, layer_structure=hypernetwork.layer_structure,
                         activation_func=hypernetwork.activation, weight_initialization=hypernetwork.weight_init,
                         is_layer_norm=hypernetwork.layer_norm, dropout_structure=hypernetwork.dropout_structure)
        log_dir = prepare_log_dir(cfg, ("hypernetworks", "images"), dict(
            kind="hypernetwork", seed=seed, start_step=start_step, template_path=str(template_path),
            model_hash=model.checkpoint_hash, hypernetwork=structure))

    # --- model and optimizer ---------------------------------------------------------------------------
    hypernetwork.to(accelerator.device).train().requires_grad_(True)
    params = list(hypernetwork.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr_schedule.value, weight_decay=WEIGHT_DECAY)
    if cfg.save_optimizer_state:
        restore_optimizer_state(optimizer, load_optimizer_state(path), emit, "hypernetwork")
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

    def compute_loss(batch, prompts):
        return denoising_loss(noise_scheduler, batch, generator, accelerator.device,
                              lambda noisy, timesteps: predict(noisy, timesteps, prompts))

    def average_gradients():
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
            param.grad.copy_(accelerator.reduce(param.grad, reduction="mean"))

    def snapshot():
        return {key: value.detach().clone() for key, value in hypernetwork.state_dict().items()}

    def save_copy(weights, step, file_path):
        hypernetwork.load_state_dict(weights)
        hypernetwork.step = step
        hypernetwork.sd_checkpoint, hypernetwork.sd_checkpoint_name = model.checkpoint_hash, model.name
        return save_hypernetwork(hypernetwork, file_path)

    def save_log_copy(weights, step):
        return save_copy(weights, step, log_dir / "hypernetworks" / f"{cfg.name}-{step}.pt")

    def preview(weights, step, caption):
        hypernetwork.eval()  # no dropout in previews
        try:
            make_preview(model, cfg, hypernetwork, step, embeddings, hypernetwork_dir, caption, log_dir, emit)
        finally:
            hypernetwork.train()

    # --- validation: a fixed set's loss, the best copy, early stop (trainer.training.validation) ---------------------
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
        cfg, run.validation_samples, template_lines, noise_scheduler, model.checkpoint_hash, validation_predict,
        describe=weight_norm, save_best=save_copy, log_dir=log_dir,
        best_file=log_dir / "hypernetworks" / f"{cfg.name}-best.pt" if log_dir else None, emit=emit,
        start_step=start_step, accelerator=accelerator, warnings=warnings)

    # --- loop --------------------------------------------------------------------------------------------
    parts = LoopParts(hypernetwork, params, compute_loss, snapshot=snapshot, save_copy=save_log_copy,
                      preview=preview,
                      before_optimizer_step=average_gradients if accelerator.num_processes > 1 else None)
    try:
        with training_precision(model, accelerator, run.checkpointing):  # frozen weights' dtype on CUDA
            outcome = run_training_loop(
                cfg, parts, accelerator=accelerator, optimizer=optimizer, dataset=dataset,
                template_lines=template_lines, rng=rng, generator=generator, lr_schedule=lr_schedule,
                clip_schedule=clip_schedule, start_step=start_step, log_dir=log_dir,
                csv_name="hypernetwork_loss.csv", emit=emit, should_stop=should_stop, validation=validation)
    finally:
        hypernetwork.eval().requires_grad_(False)
    status, step, last_good = outcome.status, outcome.step, outcome.last_good

    # --- save what was learned -----------------------------------------------------------------------------
    if is_main and step > start_step:
        save_copy(last_good, step, path)
        if cfg.save_optimizer_state and status in ("finished", "interrupted"):
            save_optimizer_state(path, optimizer.state_dict())
    report_data_parallel(accelerator, torch.cat([value.flatten() for value in last_good.values()]), emit,
                         "weights")
    accelerator.wait_for_everyone()
    saved = f"Hypernetwork saved to {path}." if step > start_step else "No steps were made, nothing saved."
    message = end_message(status, step, saved, outcome.error, what="hypernetwork",
                          stopped_early=outcome.stopped_early)
    message += validation.summary() if validation is not None else ""
    emit({"type": "end", "status": status, "message": message, "step": step})
    return TrainResult(status, step, message, str(path) if is_main else None, str(log_dir) if log_dir else None,
                       warnings)


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
    save_png_with_infotext(image, infotext, path)
    emit({"type": "preview", "step": step, "image": image, "prompt": params.prompt, "seed": seed,
          "files": [str(path)]})
