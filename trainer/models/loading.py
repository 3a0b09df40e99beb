"""Load a Stable Diffusion checkpoint - the demo model, a diffusers folder or one original-layout file - offline.

What the checkpoint dropdown lists (`list_checkpoints`) and what `load_model` accepts:

* ``"demo"``: the embedded small model pretrained on a toy world (trainer/models/demo.py), from its shipped weights.
* a diffusers folder (has ``model_index.json``): each component with ``from_pretrained(local_files_only=True)``.
* a single ``.safetensors`` / ``.ckpt`` in the original (CompVis/A1111) layout. The file holds weights but no
  architecture; the architecture comes from the config-only folders the app ships in
  ``trainer/assets/configs/<family>`` (written by scripts/make_model_assets.py), so nothing is downloaded.
  The family is read from the weights: a 768-wide CLIP text encoder is SD 1.x (``sd1``), a 1024-wide
  OpenCLIP one SD 2.x. SD 2.x comes as epsilon (2.x-base, 512 px) and v-prediction (768-v) models with
  identical weights shapes; which one a file is, is decided like A1111 does it:
  1. a ``<stem>.yaml`` beside the file (A1111's convention) with ``parameterization: "v"`` means v-prediction
     (a yaml without it means epsilon, the LDM default);
  2. otherwise the UNet is probed: run once on a constant input at the last timestep, a v-model's output is
     far below the input (mean difference < -1), an epsilon model's is not (A1111's
     ``is_using_v_parameterization_for_sd2``, done here on the already-loaded diffusers UNet: ~3 s on a
     2-core CPU).
  ``.ckpt`` files are read with ``torch.load(weights_only=True)``: a pickle that would run code is refused.
* SDXL base models, as a folder or a single file (two text encoders): recognised and loaded by
  `trainer.models.sdxl_loading` (configs in ``trainer/assets/configs/sdxl``); the SDXL refiner is refused.

``config_dir`` (tests, or an unusual model): a diffusers config folder that describes the single file's
architecture, used instead of the detected family (its scheduler config gives the prediction type unless a
sidecar yaml says otherwise; its ``tokenizer/`` is used if present).

Everything comes back in fp32, in eval mode, with ``requires_grad_(False)`` on every module: only an
embedding's own vectors (or a hypernetwork) train. ``SDModel.dtype`` is the autocast dtype: float16 on CUDA,
float32 elsewhere. Attention runs through PyTorch SDPA (diffusers' default processor).

No network: every path handed to diffusers/transformers is local and ``local_files_only=True`` is passed;
the app and the tests also set ``HF_HUB_OFFLINE=1``.
"""
import hashlib
import json
import os
import re
from pathlib import Path

import torch

from common.errors import UserError, first_line
from trainer.models.sd_model import SDModel
from trainer.models.tokenizers import TOKENIZERS, load_tokenizer

ASSETS = Path(__file__).resolve().parent.parent / "assets"
CONFIGS_DIR = ASSETS / "configs"
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
DEMO = "demo"

UNET_PREFIX = "model.diffusion_model."
CLIP_TOKEN_KEY = "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight"
OPENCLIP_TOKEN_KEY = "cond_stage_model.model.token_embedding.weight"
UNET_CONTEXT_KEY = "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
FAMILY_BY_TEXT_WIDTH = {768: "sd1", 1024: "sd2"}

# Keys of the DDPM-style noise scheduler config the training loop uses; taken from the model's own config.
SCHEDULER_KEYS = ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "trained_betas",
                  "clip_sample", "set_alpha_to_one", "steps_offset", "prediction_type", "timestep_spacing",
                  "rescale_betas_zero_snr")


# ----------------------------------------------------------------------------------------------- listing

def list_checkpoints(ckpt_dir: str | os.PathLike) -> list[str]:
    """"demo", then every diffusers folder and .safetensors/.ckpt file under ckpt_dir (recursively).

    Names are relative to ckpt_dir with "/" separators, sorted case-insensitively. Files inside a diffusers
    folder belong to it and are not listed on their own.
    """
    root = Path(ckpt_dir)
    found = []
    if root.is_dir():
        for folder, dirs, files in os.walk(root):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            here = Path(folder)
            if here != root and (here / "model_index.json").is_file():
                found.append(here.relative_to(root).as_posix())
                dirs[:] = []
                continue
            found += [(here / f).relative_to(root).as_posix() for f in files
                      if f.lower().endswith(CHECKPOINT_SUFFIXES) and not f.startswith(".")]
    return [DEMO] + sorted(found, key=str.lower)


def resolve_checkpoint(spec: str, ckpt_dir: str | os.PathLike) -> Path:
    """The path a dropdown name or a user-typed path refers to (ckpt_dir first, then as given)."""
    spec = re.sub(r"\s*\[[0-9a-fA-F]{8,10}\]$", "", spec.strip())  # A1111 shows "name.safetensors [hash]"
    for candidate in (Path(ckpt_dir) / spec, Path(spec).expanduser()):
        if candidate.exists():
            return candidate
    raise UserError(f"Checkpoint '{spec}' was not found (looked in '{ckpt_dir}' and at that path).")


# ------------------------------------------------------------------------------------------------ hashes

def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_hash(path: str | os.PathLike) -> str:
    """A1111's short hash: the first 10 hex digits of the file's sha256.

    For a diffusers folder: the hash of its UNet weights file (the part that identifies a fine-tune), or of
    its configs when there is none.
    """
    from trainer.models.hash_cache import cached_sha256  # remembered by path, size and mtime

    path = Path(path)
    if path.is_file():
        return cached_sha256(path)[:10]
    unet_files = sorted((path / "unet").glob("diffusion_pytorch_model*.safetensors")) or sorted(
        (path / "unet").glob("diffusion_pytorch_model*.bin"))
    if unet_files:
        return cached_sha256(unet_files[0])[:10]
    configs = b"".join(p.read_bytes() for p in sorted(path.rglob("*.json")))
    return hashlib.sha256(configs).hexdigest()[:10]


def demo_hash(weights: str | os.PathLike | None = None) -> str:
    """The demo model's short hash: that of its shipped weights file, like any checkpoint's."""
    from trainer.models.demo import DEMO_WEIGHTS

    return file_sha256(weights or DEMO_WEIGHTS)[:10]


# ---------------------------------------------------------------------------------------- reading files

def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or .ckpt file; never unpickles anything but tensors and plain data."""
    try:
        if path.suffix.lower() == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except Exception as error:  # noqa: BLE001 - any failure to read is the file's fault
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise UserError(f"Checkpoint '{path.name}' contains Python objects other than weights and was "
                            "not loaded (only weights-only .ckpt files are read, for safety).") from None
        raise UserError(f"Checkpoint '{path.name}' could not be read ({first_line(error)}).") from None
    while isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"Checkpoint '{path.name}' does not hold a state dict.")
    return {k: v for k, v in state.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}


def _is_zip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(4) == b"PK\x03\x04"


def normalize_text_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Old SD 1.x files name the CLIP text encoder `cond_stage_model.transformer.embeddings...` (no
    `text_model.`); give those the current names, which diffusers' loader recognises."""
    old, new = "cond_stage_model.transformer.", "cond_stage_model.transformer.text_model."
    if any(k.startswith(new) for k in state) or not any(k.startswith(old) for k in state):
        return state
    return {(new + k[len(old):] if k.startswith(old) else k): v for k, v in state.items()}


def text_layout(state: dict[str, torch.Tensor]) -> str | None:
    """"clip" (SD 1.x text encoder), "openclip" (SD 2.x) or None when the file has no text encoder."""
    if CLIP_TOKEN_KEY in state:
        return "clip"
    if OPENCLIP_TOKEN_KEY in state:
        return "openclip"
    return None


def detect_family(state: dict[str, torch.Tensor], name: str) -> str:
    """"sd1" or "sd2" from the weights' shapes; a UserError sentence for anything else."""
    if any(k.startswith("conditioner.embedders.") for k in state):
        raise UserError(f"Checkpoint '{name}' is an SDXL model; only Stable Diffusion 1.x/2.x models are supported.")
    if not any(k.startswith(UNET_PREFIX) for k in state):
        raise UserError(f"Checkpoint '{name}' is not a Stable Diffusion 1.x/2.x model (no UNet weights found).")
    unet_input = state.get(UNET_INPUT_KEY)
    if unet_input is not None and unet_input.ndim == 4 and unet_input.shape[1] != 4:
        raise UserError(f"Checkpoint '{name}' is an inpainting or instruct model (its UNet takes "
                        f"{unet_input.shape[1]} input channels); choose a regular Stable Diffusion model.")
    for key in (CLIP_TOKEN_KEY, OPENCLIP_TOKEN_KEY, UNET_CONTEXT_KEY):
        if key in state and state[key].ndim == 2:
            width = state[key].shape[1]
            if width in FAMILY_BY_TEXT_WIDTH:
                return FAMILY_BY_TEXT_WIDTH[width]
            raise UserError(f"Checkpoint '{name}' has a text width of {width}, which is neither Stable "
                            "Diffusion 1.x (768) nor 2.x (1024).")
    raise UserError(f"Checkpoint '{name}' is not a Stable Diffusion 1.x/2.x model (its text encoder and "
                    "cross-attention weights are missing).")


def sidecar_prediction_type(path: Path) -> str | None:
    """The prediction type an A1111-style `<stem>.yaml` beside the checkpoint declares, or None without one."""
    yaml_path = path.with_suffix(".yaml")
    if not yaml_path.is_file():
        return None
    import yaml

    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
        parameterization = config.get("model", {}).get("params", {}).get("parameterization", "eps")
    except Exception as error:  # noqa: BLE001
        raise UserError(f"The config '{yaml_path.name}' beside the checkpoint could not be read "
                        f"({first_line(error)}).") from None
    return "v_prediction" if str(parameterization).lower() == "v" else "epsilon"


@torch.no_grad()
def looks_like_v_prediction(unet: torch.nn.Module) -> bool:
    """A1111's probe for SD 2.x: at the last timestep, with a constant latent and context, a v-prediction
    UNet's output lies well below its input (mean difference < -1); an epsilon UNet's does not."""
    param = next(unet.parameters())
    latent = torch.full((1, unet.config.in_channels, 8, 8), 0.5, dtype=param.dtype, device=param.device)
    context = torch.full((1, 2, unet.config.cross_attention_dim), 0.5, dtype=param.dtype, device=param.device)
    timestep = torch.tensor([999], device=param.device)
    out = unet(latent, timestep, encoder_hidden_states=context).sample
    return (out.float() - latent.float()).mean().item() < -1


# -------------------------------------------------------------------------------------------- loading

def load_model(spec: str, ckpt_dir: str | os.PathLike = "models/Stable-diffusion",
               device: str | torch.device = "cpu", config_dir: str | os.PathLike | None = None,
               demo_weights: str | os.PathLike | None = None) -> SDModel:
    """Load "demo", a diffusers folder or a single .safetensors/.ckpt (a name from `list_checkpoints` or a
    path) onto `device`. Unreadable or unsupported checkpoints raise `UserError` with one sentence.
    `demo_weights`: another weights file for "demo" (used to check a pretraining run's output)."""
    device = torch.device(device)
    if spec.strip() == DEMO:
        from trainer.models.demo import DEMO_WEIGHTS, build_demo_components

        weights = Path(demo_weights or DEMO_WEIGHTS)
        return _finish(DEMO, demo_hash(weights), build_demo_components(weights), device)
    path = resolve_checkpoint(spec, ckpt_dir)
    name = _display_name(path, ckpt_dir)
    if path.is_dir():
        if not (path / "model_index.json").is_file():
            raise UserError(f"'{name}' is a folder but not a diffusers model (it has no model_index.json).")
        components = _load_diffusers_folder(path, name)
    elif path.suffix.lower() in CHECKPOINT_SUFFIXES:
        components = _load_single_file(path, name, Path(config_dir) if config_dir else None)
    else:
        raise UserError(f"'{name}' is not a checkpoint (expected a .safetensors or .ckpt file or a diffusers folder).")
    return _finish(name, checkpoint_hash(path), components, device)


def _display_name(path: Path, ckpt_dir) -> str:
    try:
        return path.resolve().relative_to(Path(ckpt_dir).resolve()).as_posix()
    except ValueError:
        return path.name


def _finish(name: str, short_hash: str, components: dict, device: torch.device) -> SDModel:
    """fp32 on the device, eval mode, nothing trainable."""
    for key in ("text_encoder", "unet", "vae", "text_encoder_2"):
        if components.get(key) is None:
            continue  # text_encoder_2: SDXL only
        module = components[key].to(device)
        if any(p.dtype != torch.float32 for p in module.parameters()):
            module.float()  # (not `.to(dtype)`, which makes diffusers warn about fp32-pinned modules)
        module.eval().requires_grad_(False)
        components[key] = module
    return SDModel(
        name=name, checkpoint_hash=short_hash, tokenizer=components["tokenizer"],
        text_encoder=components["text_encoder"], unet=components["unet"], vae=components["vae"],
        scheduler_config=components["scheduler_config"], device=device,
        dtype=torch.float16 if device.type == "cuda" else torch.float32,
        tokenizer_2=components.get("tokenizer_2"), text_encoder_2=components.get("text_encoder_2"),
    )


def training_scheduler_config(source: dict, prediction_type: str | None = None) -> dict:
    """A DDPMScheduler config with the model's noise schedule and prediction type."""
    config = {"_class_name": "DDPMScheduler", "clip_sample": False}
    config.update({k: source[k] for k in SCHEDULER_KEYS if k in source})
    config.setdefault("prediction_type", "epsilon")
    if prediction_type:
        config["prediction_type"] = prediction_type
    return config


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _weights_variant(folder: Path) -> str | None:
    """"fp16" when a component folder only has fp16-variant weights, else None."""
    if any(folder.glob("*.fp16.*")) and not any(p for p in folder.iterdir() if ".fp16." not in p.name
                                                 and p.suffix in (".safetensors", ".bin")):
        return "fp16"
    return None


def _load_diffusers_folder(folder: Path, name: str) -> dict:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    from trainer.models.sdxl_loading import load_sdxl_folder, refuse_unknown_folder, sdxl_folder_kind

    if sdxl_folder_kind(folder) is not None:
        return load_sdxl_folder(folder, name)
    refuse_unknown_folder(folder, name)

    try:
        parts = {}
        for key, cls, dtype_arg in (("unet", UNet2DConditionModel, "torch_dtype"),
                                    ("vae", AutoencoderKL, "torch_dtype"),
                                    ("text_encoder", CLIPTextModel, "dtype")):  # transformers 5 spelling
            sub = folder / key
            parts[key] = cls.from_pretrained(str(folder), subfolder=key, local_files_only=True,
                                             variant=_weights_variant(sub) if sub.is_dir() else None,
                                             **{dtype_arg: torch.float32})
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_source = _read_json(scheduler_file) if scheduler_file.is_file() else _read_json(
            CONFIGS_DIR / "sd1" / "scheduler" / "scheduler_config.json")
    except Exception as error:  # noqa: BLE001 - missing files, bad configs, mismatched weights
        raise UserError(f"The diffusers model '{name}' could not be loaded ({first_line(error)}).") from None
    width = parts["text_encoder"].get_input_embeddings().weight.shape[1]
    tokenizer_dir = folder / "tokenizer"
    if not tokenizer_dir.is_dir():
        tokenizer_dir = TOKENIZERS["openclip" if width == 1024 else "clip"]
    parts["tokenizer"] = load_tokenizer(tokenizer_dir)
    parts["scheduler_config"] = training_scheduler_config(scheduler_source)
    return parts


def _load_single_file(path: Path, name: str, config_dir: Path | None) -> dict:
    """Weights from one original-layout file, architecture from a family config folder (or config_dir)."""
    state = normalize_text_keys(read_state_dict(path))
    from trainer.models.sdxl_loading import is_sdxl_state, load_sdxl_single_file

    if is_sdxl_state(state):
        return load_sdxl_single_file(state, name, config_dir)
    layout = text_layout(state)
    prediction = sidecar_prediction_type(path)
    if config_dir is None:
        family = detect_family(state, name)
        config = CONFIGS_DIR / family
    else:
        if not any(k.startswith(UNET_PREFIX) for k in state):
            raise UserError(f"Checkpoint '{name}' is not a Stable Diffusion 1.x/2.x model (no UNet weights found).")
        family, config = None, config_dir
        prediction = prediction or _read_json(config / "scheduler" / "scheduler_config.json").get(
            "prediction_type", "epsilon")
    if layout is None:
        raise UserError(f"Checkpoint '{name}' has no text encoder weights; a full Stable Diffusion checkpoint is needed.")
    parts = _components_from_state(state, config, name)
    del state
    if family == "sd2":
        if prediction is None:
            prediction = "v_prediction" if looks_like_v_prediction(parts["unet"]) else "epsilon"
        if prediction == "v_prediction":
            config = CONFIGS_DIR / "sd2-v"
            parts["unet"].register_to_config(sample_size=_read_json(config / "unet" / "config.json")["sample_size"])
    tokenizer_dir = config / "tokenizer" if (config / "tokenizer").is_dir() else TOKENIZERS[layout]
    parts["tokenizer"] = load_tokenizer(tokenizer_dir)
    scheduler_source = _read_json(config / "scheduler" / "scheduler_config.json")
    parts["scheduler_config"] = training_scheduler_config(scheduler_source, prediction)
    return parts


def _components_from_state(state: dict, config: Path, name: str) -> dict:
    """UNet, VAE and text encoder through diffusers' single-file converters, all from local configs."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModel

    parts = {}
    try:
        for key, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            # In the file's own dtype; `_finish` makes it fp32 (a dtype here makes diffusers warn).
            parts[key] = cls.from_single_file(state, config=str(config), subfolder=key, local_files_only=True)
        parts["text_encoder"] = create_diffusers_clip_model_from_ldm(
            CLIPTextModel, state, subfolder="text_encoder", config=str(config), local_files_only=True)
    except Exception as error:  # noqa: BLE001 - shape mismatches, missing parts: the file does not fit
        raise UserError(f"Checkpoint '{name}' does not match its Stable Diffusion configuration "
                        f"({first_line(error)}).") from None
    for key, module in parts.items():
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if missing:
            raise UserError(f"Checkpoint '{name}' is incomplete: {len(missing)} {key} weights are missing "
                            f"(for example '{missing[0]}').")
    return parts
