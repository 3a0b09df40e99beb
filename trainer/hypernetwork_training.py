"""Train a hypernetwork: only its MLPs learn; text encoder, UNet and VAE stay frozen.

The same shape as `trainer.textual_inversion` (settings -> data -> optimizer -> loop -> save), the same events,
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
import random
import time
from collections import ChainMap
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from .conditioning import PromptEncoder
from .dataset import build_prompt, read_template
from .errors import UserError
from .hypernetwork import (HypernetworkFolder, HypernetworkReadError, context_widths, list_hypernetworks,
                           load_optimizer_state, read_hypernetwork, save_hypernetwork, save_optimizer_state)
from .hypernetwork_attention import apply_hypernetworks, extract_hypernetwork_tags
from .sampling import save_png_with_infotext, txt2img
from .schedule import parse_schedule
from .train_config import TrainConfig
from .training_common import (LossCsv, TrainResult, batch_stream, build_dataset, denoising_loss, end_message,
                              make_accelerator, prepare_log_dir, preview_params, resolve_template)

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


def train_hypernetwork(model, cfg: TrainConfig, hypernetwork_dir, templates_dir, embeddings=None,
                       progress=None, should_stop=None, accelerator=None) -> TrainResult:
    """Train the hypernetwork `cfg.name` (a file in `hypernetwork_dir`) on `cfg.dataset`. `embeddings` (name ->
    vectors) may appear in the prompts. Events and interruption as `train_embedding`."""
    emit = progress or (lambda event: None)
    should_stop = should_stop or (lambda: False)
    if not cfg.name:
        raise UserError("Choose a hypernetwork to train (create one in the Create hypernetwork tab).")
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
    lr_schedule = parse_schedule(cfg.learn_rate, cfg.steps, start_step, "learning rate")
    clip_schedule = None
    if cfg.clip_grad_mode != "disabled":
        clip_schedule = parse_schedule(cfg.clip_grad_value, cfg.steps, start_step, "gradient clipping")
    if cfg.preview_every:
        preview_params(cfg, "a caption")  # bad preview settings are a sentence now, not a failure at step N
    if start_step >= cfg.steps:
        raise UserError(f"Hypernetwork '{cfg.name}' already has {start_step} steps, not below max steps "
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
        state = load_optimizer_state(path)
        if state is not None:
            try:
                optimizer.load_state_dict(state)
                emit({"type": "message", "text": "Resumed the optimizer state saved beside the hypernetwork."})
            except (ValueError, KeyError, RuntimeError):
                emit({"type": "message", "text": "Saved optimizer state does not match; starting it fresh."})
    optimizer = accelerator.prepare(optimizer)
    noise_scheduler = DDPMScheduler.from_config(model.scheduler_config)
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, dict(embeddings or {}))
    conditioning = CachedConditioning(encoder, accelerator.device, accelerator.autocast,
                                      cache=not cfg.shuffle_tags and not cfg.tag_dropout)
    training_stack = [(hypernetwork, 1.0)]  # the reference trains at strength 1

    def compute_loss(batch, prompts):
        cond = conditioning(prompts)

        def predict(noisy, timesteps):
            with accelerator.autocast(), apply_hypernetworks(model.unet, training_stack):
                return model.unet(noisy, timesteps, cond).sample

        return denoising_loss(noise_scheduler, batch, generator, accelerator.device, predict)

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

    # --- loop --------------------------------------------------------------------------------------------
    loss_csv = LossCsv(log_dir / "hypernetwork_loss.csv", cfg.loss_csv_every) if log_dir is not None else None
    step = start_step
    last_good = snapshot()
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
                with accelerator.accumulate(hypernetwork):
                    loss = compute_loss(batch, prompts)
                    if not torch.isfinite(loss):
                        status = "nan"
                        break
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        if accelerator.num_processes > 1:
                            average_gradients()
                        if clip_schedule is not None:
                            clip_value = clip_schedule.value_at(step) or clip_schedule.value
                            if cfg.clip_grad_mode == "value":
                                accelerator.clip_grad_value_(params, clip_value)
                            else:
                                accelerator.clip_grad_norm_(params, clip_value)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                loss_total += loss.item() / cfg.grad_accum
            if status != "finished":
                optimizer.zero_grad(set_to_none=True)
                break
            if not all(torch.isfinite(param).all() for param in params):
                status = "nan"
                break
            step += 1
            last_good = snapshot()
            elapsed = time.perf_counter() - started
            emit({"type": "step", "step": step, "max_steps": cfg.steps, "loss": loss_total, "lr": lr,
                  "epoch": epoch, "epoch_step": epoch_step, "prompt": last_prompt,
                  "it_per_s": (step - start_step) / elapsed if elapsed > 0 else 0.0})
            if not is_main:
                continue
            if loss_csv is not None:
                loss_csv.write(step, epoch, epoch_step, loss_total, lr)
            if log_dir is not None and cfg.save_every and step % cfg.save_every == 0:
                copy_path = save_copy(last_good, step, log_dir / "hypernetworks" / f"{cfg.name}-{step}.pt")
                emit({"type": "saved", "path": str(copy_path), "step": step})
            if log_dir is not None and cfg.preview_every and step % cfg.preview_every == 0:
                hypernetwork.eval()  # no dropout in previews
                try:
                    make_preview(model, cfg, hypernetwork, step, embeddings, hypernetwork_dir, last_prompt,
                                 log_dir, emit)
                finally:
                    hypernetwork.train()
    except Exception as e:  # noqa: BLE001 - reported truthfully below, after saving the last good weights
        status, error = "failed", e
    finally:
        if loss_csv is not None:
            loss_csv.close()
        hypernetwork.eval().requires_grad_(False)

    # --- save what was learned -----------------------------------------------------------------------------
    if is_main and step > start_step:
        save_copy(last_good, step, path)
        if cfg.save_optimizer_state and status in ("finished", "interrupted"):
            save_optimizer_state(path, optimizer.state_dict())
    if accelerator.num_processes > 1:  # data parallel: every process must hold the very same weights
        flat = torch.cat([value.flatten().float() for value in last_good.values()])
        gathered = accelerator.gather(flat.to(accelerator.device)[None]).cpu()
        in_sync = all(torch.equal(gathered[0], other) for other in gathered[1:])
        emit({"type": "message", "text": f"Data parallel over {accelerator.num_processes} processes; weights "
              + ("identical on every process." if in_sync else "DIFFER between processes.")})
    accelerator.wait_for_everyone()
    saved = f"Hypernetwork saved to {path}." if step > start_step else "No steps were made, nothing saved."
    message = end_message(status, step, saved, error, what="hypernetwork")
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
