"""txt2img: a plain denoising loop over a diffusers scheduler, with the reference webui's prompt features.

Read top to bottom:
  1. `Txt2ImgParams` and `validate_params`: what the txt2img tab (or a training preview) asks for.
  2. `ConditioningPlan`: the prompt split on AND, each part and the negative prompt scheduled over the steps
     (prompt editing `[a:b:when]`, alternation `[a|b]`), every distinct text encoded once.
  3. `txt2img`: for each image, seeded noise -> scheduler steps with classifier-free guidance -> VAE decode.
  4. Infotext: the reference's "parameters" text, and PNG files carrying it.

Seeds: the initial noise and any ancestral/SDE noise come from one CPU `torch.Generator` seeded with the image's
seed, so the same seed gives the same image on CPU (on a GPU, up to kernel nondeterminism). Image k of a batch
uses seed + k, as in the reference. Noise is not bit-compatible with the reference webui's.
"""
import dataclasses
import inspect
import json
import secrets
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

import torch
from PIL import Image

from trainer.prompts.conditioning import PromptEncoder
from common import events
from common.errors import UserError
from common.files import save_png
from trainer.hypernetworks.attention import apply_hypernetworks, resolve_prompt_hypernetworks
from trainer.prompts.parser import prompt_schedule, split_and
from trainer.sampling.samplers import SAMPLERS, make_scheduler, sampler_spec
from trainer.models.sd_model import SDModel
from trainer.models.sdxl import prompt_encoder_for, size_time_ids, unet_inputs, vae_precision

MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed accepts
RANDOM_SEED_BOUND = 4294967294  # random seeds are drawn below this, like the reference's


@dataclass
class Txt2ImgParams:
    """One txt2img request. `seed=-1` draws a random seed; `batch_count` images use seed, seed+1, ..."""

    prompt: str
    negative_prompt: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 512
    height: int = 512
    batch_count: int = 1
    clip_skip: int = 1


class GeneratedImage(NamedTuple):
    """One result of `txt2img`; unpacks as `(image, infotext, seed)`."""

    image: Image.Image
    infotext: str
    seed: int


def _whole_number(value, label: str) -> int:
    """`value` as an int (UI sliders may send 20.0); a UserError sentence if it is not a whole number."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UserError(f"{label} must be a whole number, not {value!r}.") from None
    if not number.is_integer():
        raise UserError(f"{label} must be a whole number, not {value!r}.")
    return int(number)


def validate_params(params: Txt2ImgParams) -> Txt2ImgParams:
    """A checked copy of `params` with numbers as proper ints/floats; UserError sentences for bad values."""
    sampler_spec(params.sampler)  # raises with the list of valid names
    width = _whole_number(params.width, "Width")
    height = _whole_number(params.height, "Height")
    for label, size in (("Width", width), ("Height", height)):
        if not 64 <= size <= 2048 or size % 8:
            raise UserError(f"{label} must be a multiple of 8 between 64 and 2048, not {size}.")
    steps = _whole_number(params.steps, "Sampling steps")
    if not 1 <= steps <= 150:
        raise UserError(f"Sampling steps must be between 1 and 150, not {steps}.")
    try:
        cfg_scale = float(params.cfg_scale)
    except (TypeError, ValueError):
        raise UserError(f"CFG scale must be a number, not {params.cfg_scale!r}.") from None
    if not 0 <= cfg_scale <= 30:
        raise UserError(f"CFG scale must be between 0 and 30, not {params.cfg_scale}.")
    seed = _whole_number(params.seed, "Seed")
    if not -1 <= seed <= MAX_SEED:
        raise UserError(f"Seed must be -1 (random) or a number from 0 to {MAX_SEED}, not {seed}.")
    batch_count = _whole_number(params.batch_count, "Batch count")
    if not 1 <= batch_count <= 100:
        raise UserError(f"Batch count must be between 1 and 100, not {batch_count}.")
    clip_skip = _whole_number(params.clip_skip, "Clip skip")
    if not 1 <= clip_skip <= 12:
        raise UserError(f"Clip skip must be between 1 and 12, not {clip_skip}.")
    return dataclasses.replace(
        params, prompt=str(params.prompt or ""), negative_prompt=str(params.negative_prompt or ""),
        width=width, height=height, steps=steps, cfg_scale=cfg_scale, seed=seed,
        batch_count=batch_count, clip_skip=clip_skip,
    )


# ---------------------------------------------------------------------------------------------- conditioning

def text_at_step(schedule: list, step: int) -> str:
    """The prompt text in force at sampling step `step` (1-based) of a `prompt_schedule` result.

    That is the first entry whose end step is >= `step`; past the last entry, the last text.
    """
    for end_step, text in schedule:
        if step <= end_step:
            return text
    return schedule[-1][1]


@dataclass(frozen=True)
class ConditioningPlan:
    """Which text conditions each step: the negative prompt's schedule and each AND part's (weight, schedule)."""

    negative_schedule: list
    parts: list  # [(weight, schedule)]

    @classmethod
    def build(cls, prompt: str, negative_prompt: str, steps: int) -> "ConditioningPlan":
        """Split `prompt` on AND (each part with its weight), then schedule every part and the negative prompt.

        The negative prompt is not split on AND (as in the reference, where it is the unconditional side).
        """
        parts = split_and(prompt) or [(prompt, 1.0)]
        return cls(
            negative_schedule=prompt_schedule(negative_prompt, steps),
            parts=[(float(weight), prompt_schedule(text, steps)) for text, weight in parts],
        )

    def texts_at(self, step: int) -> tuple[str, list[str]]:
        """(negative text, [text of each AND part]) in force at sampling step `step` (1-based)."""
        return text_at_step(self.negative_schedule, step), [text_at_step(s, step) for _, s in self.parts]

    def distinct_texts(self) -> list[str]:
        """Every text the plan can use, each once, in first-seen order (so each is encoded only once)."""
        texts = [text for _, text in self.negative_schedule]
        texts += [text for _, schedule in self.parts for _, text in schedule]
        return list(dict.fromkeys(texts))

    @property
    def weights(self) -> list[float]:
        return [weight for weight, _ in self.parts]


def combine_guidance(prediction: torch.Tensor, weights: torch.Tensor, cfg_scale: float) -> torch.Tensor:
    """Classifier-free guidance with composable diffusion.

    `prediction` is the UNet output for [uncond, cond_1, ..., cond_k] (batch 1 + k); returns
    uncond + cfg_scale * sum_i w_i * (cond_i - uncond), batch 1. With one part of weight 1 this is plain CFG.
    """
    uncond, conds = prediction[:1], prediction[1:]
    w = weights.to(prediction.dtype).view(-1, *([1] * (prediction.dim() - 1)))
    return uncond + cfg_scale * (w * (conds - uncond)).sum(dim=0, keepdim=True)


# ---------------------------------------------------------------------------------------------- the loop

def _sampling_step(timestep_index: int, order: int, steps: int) -> int:
    """The 1-based sampling step a scheduler timestep belongs to.

    Second-order schedulers (Heun, DPM2) evaluate the UNet twice per step (except the last), listing 2n-1
    timesteps for n steps; PLMS lists n+1. Clamped to `steps`.
    """
    return min(timestep_index // order + 1, steps)


def _decode(model: SDModel, latents: torch.Tensor) -> Image.Image:
    """VAE-decode one latent to an RGB PIL image."""
    latents = latents / model.latent_scale
    shift = getattr(model.vae.config, "shift_factor", None)
    if shift:
        latents = latents + shift
    vae = model.vae
    # the VAE decodes in its own dtype (fp32 as loaded; SDXL's always in fp32), outside any autocast
    with vae_precision(model), torch.autocast(model.device.type, enabled=False):
        vae_dtype = next(vae.parameters()).dtype
        pixels = vae.decode(latents.to(vae_dtype)).sample.float()
        if vae_dtype != torch.float32 and not torch.isfinite(pixels).all():
            # SD's VAE decoder overflows fp16 on some latents: decode this one again in fp32.
            vae.to(dtype=torch.float32)
            try:
                pixels = vae.decode(latents.float()).sample.float()
            finally:
                vae.to(dtype=vae_dtype)
    pixels = ((pixels[0] / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    return Image.fromarray(pixels.permute(1, 2, 0).cpu().numpy())


def _batch_conditioning(conds: list):
    """Stack per-text conditionings: tensors, or SDXL's (context, pooled) pairs."""
    if isinstance(conds[0], tuple):
        return tuple(torch.cat(parts, dim=0) for parts in zip(*conds))
    return torch.cat(conds, dim=0)


def _denoise(model, params, plan, encoded, seed, progress, should_stop, image_index, negatives=None):
    """Run the sampler for one image; the final latents, or None when `should_stop()` said stop. `negatives`
    (default: `encoded`) maps negative texts to their conditioning."""
    device = model.device
    scheduler = make_scheduler(params.sampler, model.scheduler_config, model.prediction_type, seed)
    scheduler.set_timesteps(params.steps, device=device)
    step_takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    order = getattr(scheduler, "order", 1)

    generator = torch.Generator("cpu").manual_seed(seed)
    factor = model.vae_scale_factor
    shape = (1, model.unet.config.in_channels, params.height // factor, params.width // factor)
    latents = torch.randn(shape, generator=generator, dtype=torch.float32).to(device)
    latents = latents * scheduler.init_noise_sigma

    weights = torch.tensor(plan.weights, device=device)
    negatives = encoded if negatives is None else negatives
    timesteps = list(scheduler.timesteps)
    for index, t in enumerate(timesteps):
        if should_stop is not None and should_stop():
            return None
        step = _sampling_step(index, order, params.steps)
        negative_text, part_texts = plan.texts_at(step)
        conds = [negatives[negative_text]] + [encoded[text] for text in part_texts]
        cond = _batch_conditioning(conds)
        sizes = size_time_ids(params.height, params.width, len(conds), device) if isinstance(cond, tuple) else None

        model_input = scheduler.scale_model_input(latents, t)
        model_input = model_input.expand(len(conds), *model_input.shape[1:])
        prediction = model.unet(model_input, t, **unet_inputs(cond, sizes)).sample.float()
        guided = combine_guidance(prediction, weights, params.cfg_scale)

        extra = {"generator": generator} if step_takes_generator else {}
        latents = scheduler.step(guided, t, latents, **extra).prev_sample

        last_of_step = index + 1 == len(timesteps) or _sampling_step(index + 1, order, params.steps) != step
        if progress is not None and last_of_step:
            progress(events.Sampled(step, params.steps, image_index + 1, params.batch_count))
    return latents


def txt2img(
    model: SDModel,
    params: Txt2ImgParams,
    embeddings: Mapping[str, torch.Tensor] = MappingProxyType({}),
    progress: Callable[[dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    hypernetworks=None,
) -> list[GeneratedImage]:
    """Generate `params.batch_count` images; each comes back as (PIL image, infotext, seed).

    `embeddings` maps textual-inversion names to their vectors (usable in both prompts). `progress` gets
    `dict(step=i, total=steps, image=k, images=batch_count)` after each sampling step (i and k 1-based).
    `should_stop()` is checked before every UNet evaluation; when it returns True the unfinished image is
    dropped and the images finished so far are returned (possibly none). Bad params raise UserError.
    `<hypernet:name:multiplier>` tags in the prompt apply hypernetworks looked up in `hypernetworks` (a mapping
    name -> Hypernetwork, or a folder path); the tags are removed from the text the text encoder sees (the
    infotext keeps them). An unknown name is a UserError.
    """
    params = validate_params(params)
    prompt, hypernetwork_stack = resolve_prompt_hypernetworks(params.prompt, hypernetworks)
    first_seed = params.seed if params.seed != -1 else secrets.randbelow(RANDOM_SEED_BOUND)
    held = next(model.unet.parameters()).dtype  # a training run may hold the UNet in bf16 (trainer/models/precision.py)
    compute = held if held != torch.float32 else model.dtype
    autocast = (torch.autocast("cuda", dtype=compute)
                if model.device.type == "cuda" and compute != torch.float32 else nullcontext())
    results = []
    with torch.inference_mode(), autocast:  # (also inside a training run: nothing here keeps a graph)
        plan = ConditioningPlan.build(prompt, params.negative_prompt, params.steps)
        if getattr(model, "is_sdxl", False):
            encoder = prompt_encoder_for(model, embeddings, clip_skip=params.clip_skip)
        else:
            encoder = PromptEncoder(model.tokenizer, model.text_encoder, embeddings, clip_skip=params.clip_skip)
        texts = plan.distinct_texts()
        out = encoder(texts)
        if isinstance(out, tuple):  # SDXL: (context, pooled)
            context, pooled = (part.to(model.device) for part in out)
            encoded = {text: (context[i:i + 1], pooled[i:i + 1]) for i, text in enumerate(texts)}
        else:
            vectors = out.to(model.device)
            encoded = {text: vectors[i:i + 1] for i, text in enumerate(texts)}
        negatives = encoded
        if getattr(model, "is_sdxl", False) and not params.negative_prompt.strip():
            # SDXL was trained with zeroed conditioning for an empty prompt (diffusers' force_zeros_for_empty_prompt;
            # the reference does the same for an empty negative prompt).
            negatives = {text: tuple(torch.zeros_like(part) for part in encoded[text])
                         for _, text in plan.negative_schedule}

        for image_index in range(params.batch_count):
            seed = first_seed + image_index
            with apply_hypernetworks(model.unet, hypernetwork_stack):
                latents = _denoise(model, params, plan, encoded, seed, progress, should_stop, image_index,
                                   negatives)
            if latents is None:
                break
            image = _decode(model, latents)
            results.append(GeneratedImage(image, format_infotext(params, seed, model), seed))
    return results


# ---------------------------------------------------------------------------------------------- infotext

def _quote(value) -> str:
    """The reference's quoting of infotext values: JSON-quoted when they hold a comma, colon or newline."""
    text = str(value)
    if "," in text or ":" in text or "\n" in text:
        return json.dumps(text, ensure_ascii=False)
    return text


def _number(value: float) -> str:
    """7.0 -> "7", 7.5 -> "7.5"."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _model_name(name: str) -> str:
    """What the reference writes as `Model:`: the checkpoint's file name without its extension."""
    base = Path(name).name if name else ""
    for suffix in (".safetensors", ".ckpt", ".pt", ".bin"):
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def format_infotext(params: Txt2ImgParams, seed: int, model: SDModel | None = None) -> str:
    """The reference webui's generation-parameters text, e.g.

        a cat
        Negative prompt: blurry
        Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model hash: 0123456789, Model: v1-5

    The negative-prompt line is left out when it is empty; "Clip skip" appears only when it is above 1.
    """
    fields = {
        "Steps": params.steps,
        "Sampler": params.sampler,
        "CFG scale": _number(params.cfg_scale),
        "Seed": seed,
        "Size": f"{params.width}x{params.height}",
        "Model hash": getattr(model, "checkpoint_hash", None) or None,
        "Model": _model_name(getattr(model, "name", "")) or None,
        "Clip skip": params.clip_skip if params.clip_skip > 1 else None,
    }
    settings = ", ".join(f"{key}: {_quote(value)}" for key, value in fields.items() if value is not None)
    negative = f"\nNegative prompt: {params.negative_prompt}" if params.negative_prompt else ""
    return f"{params.prompt}{negative}\n{settings}".strip()


def read_infotext(path) -> str | None:
    """The `parameters` text of an image file, or None when it has none."""
    with Image.open(path) as image:
        text = image.info.get("parameters")
    return text if isinstance(text, str) else None


__all__ = [
    "SAMPLERS", "Txt2ImgParams", "GeneratedImage", "validate_params", "txt2img", "text_at_step",
    "ConditioningPlan", "combine_guidance", "format_infotext", "read_infotext",
]


def save_txt2img_outputs(results, outputs_dir) -> list:
    """Keep generated images as the reference does: `<outputs>/txt2img-images/<YYYY-MM-DD>/<NNNNN>-<seed>.png`,
    numbered on from the folder's highest number, each carrying its infotext. Returns the paths."""
    import datetime

    folder = Path(outputs_dir) / "txt2img-images" / datetime.date.today().isoformat()
    folder.mkdir(parents=True, exist_ok=True)
    numbers = [int(p.name[:5]) for p in folder.glob("*.png") if p.name[:5].isdigit()]
    number = max(numbers, default=-1) + 1
    paths = []
    for image, infotext, seed in results:
        while True:  # another generation (the page, the CLI) may take a number meanwhile: never replace its file
            try:
                paths.append(save_png(image, folder / f"{number:05}-{seed}.png", infotext,
                                                    exclusive=True))
                break
            except FileExistsError:
                number += 1
        number += 1
    return paths

