"""Recognise and load SDXL checkpoints offline: a diffusers folder or one original-layout file.

An SDXL base model has two text encoders: CLIP ViT-L/14 (``text_encoder``, the ``clip_l`` half of an
embedding) and OpenCLIP ViT-bigG/14 with its projection (``text_encoder_2``, ``clip_g``); its UNet takes both
encoders' hidden states side by side (2048 wide) and an added "text_time" embedding. In a single file they are
``conditioner.embedders.0.transformer.*`` (CLIP-L), ``conditioner.embedders.1.model.*`` (OpenCLIP layout) and
``model.diffusion_model.*``; the architecture comes from ``trainer/assets/configs/sdxl`` (or ``config_dir``).

Refused with one sentence: the SDXL refiner (only the OpenCLIP encoder, ``conditioner.embedders.0.model.*``, a
UNet with 1280-wide cross-attention and aesthetic-score conditioning: it cannot take an embedding's ``clip_l``
half and is not meant for txt2img from noise), SDXL inpainting UNets, and layouts that fit no known family.

`trainer.models.loading` calls in here when the weights or the folder say SDXL; `load_model` then finishes the parts
exactly as for SD 1.x/2.x.
"""
import json
from pathlib import Path
from types import SimpleNamespace

import torch

from common.errors import UserError, first_line

CLIP_L_KEY = "conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight"
CLIP_G_KEY = "conditioner.embedders.1.model.token_embedding.weight"
REFINER_KEY = "conditioner.embedders.0.model.token_embedding.weight"
UNET_PREFIX = "model.diffusion_model."
CLIP_L_PREFIX = "conditioner.embedders.0.transformer."
CLIP_G_PREFIX = "conditioner.embedders.1.model."
UNET_INPUT_KEY = "model.diffusion_model.input_blocks.0.0.weight"
UNET_ADDED_KEY = "model.diffusion_model.label_emb.0.0.weight"
SDXL_CONFIG = Path(__file__).resolve().parent.parent / "assets" / "configs" / "sdxl"
REFINER = ("is an SDXL refiner, which only refines other models' images and has no CLIP-L text encoder for "
           "an embedding's clip_l vectors; choose an SDXL base model")


def is_sdxl_state(state: dict) -> bool:
    """Whether an original-layout state dict is an SDXL-family file (its text encoders sit under `conditioner.`)."""
    return any(k.startswith("conditioner.embedders.") for k in state)


def check_sdxl_state(state: dict, name: str) -> None:
    """A UserError sentence unless the weights are an SDXL base model (two text encoders, 4-channel UNet)."""
    if REFINER_KEY in state and CLIP_L_KEY not in state:
        raise UserError(f"Checkpoint '{name}' {REFINER}.")
    if CLIP_L_KEY not in state or CLIP_G_KEY not in state:
        raise UserError(f"Checkpoint '{name}' has an unknown SDXL-like layout (it lacks the CLIP-L or the "
                        "OpenCLIP ViT-bigG text encoder); only SDXL base models are supported.")
    if not any(k.startswith(UNET_PREFIX) for k in state) or UNET_ADDED_KEY not in state:
        raise UserError(f"Checkpoint '{name}' has SDXL text encoders but no SDXL UNet weights; a full SDXL "
                        "base checkpoint is needed.")
    unet_input = state.get(UNET_INPUT_KEY)
    if unet_input is not None and unet_input.ndim == 4 and unet_input.shape[1] != 4:
        raise UserError(f"Checkpoint '{name}' is an SDXL inpainting or instruct model (its UNet takes "
                        f"{unet_input.shape[1]} input channels); choose an SDXL base model.")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def sdxl_folder_kind(folder: Path) -> str | None:
    """"sdxl" for an SDXL base diffusers folder, "refiner" for the SDXL refiner, None for anything else."""
    index_path = folder / "model_index.json"
    try:
        index = _read_json(index_path)
    except (OSError, ValueError):
        return None
    if not isinstance(index, dict):
        return None
    has = {key: (isinstance(index.get(key), list) and index[key][0] is not None) or (folder / key).is_dir()
           for key in ("text_encoder", "text_encoder_2")}
    if has["text_encoder_2"] and not has["text_encoder"]:
        return "refiner"
    if has["text_encoder_2"] or "XL" in str(index.get("_class_name", "")):
        return "sdxl"
    return None


def refuse_unknown_folder(folder: Path, name: str) -> None:
    """A sentence for a diffusers folder that is no Stable Diffusion 1.x/2.x or SDXL model (SD 3, Flux,
    Kandinsky...: no UNet, or a UNet with another added embedding)."""
    try:
        index = _read_json(folder / "model_index.json")
    except (OSError, ValueError):
        index = {}
    kind = index.get("_class_name", "an unknown pipeline") if isinstance(index, dict) else "an unknown pipeline"
    unet_config = folder / "unet" / "config.json"
    try:
        added = _read_json(unet_config).get("addition_embed_type") if unet_config.is_file() else "missing"
    except (OSError, ValueError):
        return  # a broken config: the loader says what is wrong with it
    if added is not None:
        what = "no UNet" if added == "missing" else f"a UNet with the added embedding {added!r}"
        raise UserError(f"'{name}' is not a Stable Diffusion 1.x/2.x or SDXL model ({kind} with {what}).")


def _check_unet_config(unet, text_width: int, name: str) -> None:
    config = unet.config
    if config.addition_embed_type != "text_time" or config.cross_attention_dim != text_width:
        raise UserError(f"'{name}' has an unknown SDXL-like layout (UNet added embedding "
                        f"{config.addition_embed_type!r}, cross-attention width {config.cross_attention_dim} "
                        f"where the two text encoders give {text_width}); only SDXL base models are supported.")
    if config.in_channels != 4:
        raise UserError(f"'{name}' is an SDXL inpainting or instruct model (its UNet takes {config.in_channels} "
                        "input channels); choose an SDXL base model.")


def _tokenizers(folder: Path | None) -> dict:
    """Both tokenizers: the folder's own when it has them, else the app's CLIP BPE (pad with the end token) and
    the same BPE padding with "!" (what SDXL's tokenizer_2 is)."""
    from trainer.models.tokenizers import TOKENIZERS, load_tokenizer

    parts = {}
    for key, fallback in (("tokenizer", TOKENIZERS["clip"]), ("tokenizer_2", TOKENIZERS["openclip"])):
        own = folder / key if folder is not None else None
        parts[key] = load_tokenizer(own if own is not None and own.is_dir() else fallback)
    return parts


def _text_width(parts: dict) -> int:
    return sum(parts[k].get_input_embeddings().weight.shape[1] for k in ("text_encoder", "text_encoder_2"))


def load_sdxl_folder(folder: Path, name: str) -> dict:
    """The parts of an SDXL base diffusers folder (fp32, on the CPU); a sentence for a refiner or a bad folder."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from trainer.models.loading import _weights_variant, training_scheduler_config

    if sdxl_folder_kind(folder) == "refiner":
        raise UserError(f"'{name}' {REFINER}.")
    if not (folder / "unet").is_dir():
        raise UserError(f"'{name}' is not a Stable Diffusion 1.x/2.x or SDXL model (it has no unet folder).")
    try:
        parts = {}
        for key, cls, dtype_arg in (("unet", UNet2DConditionModel, "torch_dtype"),
                                    ("vae", AutoencoderKL, "torch_dtype"),
                                    ("text_encoder", CLIPTextModel, "dtype"),
                                    ("text_encoder_2", CLIPTextModelWithProjection, "dtype")):
            sub = folder / key
            parts[key] = cls.from_pretrained(str(folder), subfolder=key, local_files_only=True,
                                             variant=_weights_variant(sub) if sub.is_dir() else None,
                                             **{dtype_arg: torch.float32})
        scheduler_file = folder / "scheduler" / "scheduler_config.json"
        scheduler_source = _read_json(scheduler_file if scheduler_file.is_file()
                                      else SDXL_CONFIG / "scheduler" / "scheduler_config.json")
    except Exception as error:  # noqa: BLE001 - missing files, bad configs, mismatched weights
        raise UserError(f"The SDXL diffusers model '{name}' could not be loaded ({first_line(error)}).") from None
    _check_unet_config(parts["unet"], _text_width(parts), name)
    parts.update(_tokenizers(folder))
    parts["scheduler_config"] = training_scheduler_config(scheduler_source)
    return parts


def _text_encoder_from_state(cls, config: Path, subfolder: str, weights: dict):
    """A text encoder built (without initialising weights) from its config and given exactly these weights.

    The two encoders are told apart by their place in the file (embedders.0 / embedders.1), not by their widths
    as diffusers' single-file helper does, so a model whose encoders have the same width loads right too."""
    from accelerate import init_empty_weights
    from transformers import CLIPTextConfig

    with init_empty_weights():
        model = cls(CLIPTextConfig.from_pretrained(str(config), subfolder=subfolder, local_files_only=True))
    wrapped = any(k.startswith("text_model.") for k in model.state_dict())
    weights = {("text_model." + k.removeprefix("text_model.") if wrapped and not k.startswith("text_projection")
                else k.removeprefix("text_model.")): v for k, v in weights.items()}
    weights = {k: v for k, v in weights.items() if not k.endswith("position_ids")}
    model.load_state_dict(weights, strict=False, assign=True)
    return model


def load_sdxl_single_file(state: dict, name: str, config_dir: Path | None) -> dict:
    """The parts of an original-layout SDXL file; the architecture from ``configs/sdxl`` or ``config_dir``."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from diffusers.loaders.single_file_utils import convert_open_clip_checkpoint
    from transformers import CLIPTextModel, CLIPTextModelWithProjection

    from trainer.models.loading import training_scheduler_config

    check_sdxl_state(state, name)
    config = config_dir or SDXL_CONFIG
    if not (config / "text_encoder_2").is_dir():
        raise UserError(f"Checkpoint '{name}' is an SDXL model, but the configuration '{config}' describes "
                        "another family (it has no text_encoder_2).")
    parts = {}
    try:
        for key, cls in (("unet", UNet2DConditionModel), ("vae", AutoencoderKL)):
            parts[key] = cls.from_single_file(state, config=str(config), subfolder=key, local_files_only=True)
        parts["text_encoder"] = _text_encoder_from_state(
            CLIPTextModel, config, "text_encoder",
            {k[len(CLIP_L_PREFIX):]: v for k, v in state.items() if k.startswith(CLIP_L_PREFIX)})
        parts["text_encoder_2"] = _text_encoder_from_state(
            CLIPTextModelWithProjection, config, "text_encoder_2",
            convert_open_clip_checkpoint(SimpleNamespace(config=SimpleNamespace(hidden_size=state[CLIP_G_KEY].shape[1])),
                                         state, prefix=CLIP_G_PREFIX))
    except Exception as error:  # noqa: BLE001 - shape mismatches, missing parts: the file does not fit
        raise UserError(f"Checkpoint '{name}' does not match its SDXL configuration ({first_line(error)}).") from None
    for key, module in parts.items():
        missing = [n for n, p in module.named_parameters() if p.device.type == "meta"]
        if missing:
            raise UserError(f"Checkpoint '{name}' is incomplete: {len(missing)} {key} weights are missing "
                            f"(for example '{missing[0]}').")
    _check_unet_config(parts["unet"], _text_width(parts), name)
    parts.update(_tokenizers(config_dir if config_dir and (config_dir / "tokenizer").is_dir() else None))
    parts["scheduler_config"] = training_scheduler_config(
        _read_json(config / "scheduler" / "scheduler_config.json"))
    return parts
