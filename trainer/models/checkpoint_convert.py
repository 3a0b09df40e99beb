"""diffusers components -> one state dict in the original (CompVis/LDM, A1111) single-file layout.

The reverse of what diffusers' single-file loader does, so that a diffusers model can be saved as the kind of
`.safetensors`/`.ckpt` file A1111 users have (tests use it to make tiny single-file fixtures):

* UNet under ``model.diffusion_model.``: ``down_blocks.b.resnets.l`` -> ``input_blocks.i.0`` and
  ``attentions`` -> ``input_blocks.i.1`` with ``i = 1 + b*(L+1) + l`` (L = layers per block), a level's
  downsampler -> ``input_blocks.(1 + b*(L+1) + L).0.op``; the middle block -> ``middle_block.0/1/2``; the up
  path likewise as ``output_blocks`` (with ``L+1`` layers per level, the upsampler after the attention).
  Resnet parts are renamed (``norm1`` -> ``in_layers.0``, ``conv1`` -> ``in_layers.2`` ...); transformer
  blocks keep their names.
* VAE under ``first_stage_model.``: ``down_blocks.i`` -> ``down.i.block``, the decoder's up blocks in reverse
  order (``up_blocks.i`` -> ``up.(n-1-i)``), the middle attention's q/k/v/proj_out as 1x1 convolutions.
* Text encoder: SD 1.x CLIP under ``cond_stage_model.transformer.text_model.`` (names unchanged); SD 2.x
  OpenCLIP under ``cond_stage_model.model.`` with ``resblocks``, ``ln_1``/``ln_2``, ``mlp.c_fc``/``c_proj`` and
  q/k/v fused into one ``in_proj`` matrix.
* SDXL (`sdxl_to_original`): the same UNet mapping plus the added "text_time" embedding
  (``add_embedding.linear_1/2`` -> ``label_emb.0.0/2``), the same VAE, CLIP-L under
  ``conditioner.embedders.0.transformer.text_model.`` and OpenCLIP ViT-bigG under ``conditioner.embedders.1.model.``
  in the OpenCLIP layout, its projection stored as OpenCLIP does (``x @ text_projection``, the transpose of the
  diffusers linear layer's weight).
"""
import re

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPENCLIP_PREFIX = "cond_stage_model.model."
SDXL_CLIP_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."

_RESNET_UNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("time_emb_proj", "emb_layers.1"),
                ("norm2", "out_layers.0"), ("conv2", "out_layers.3"), ("conv_shortcut", "skip_connection")]
_UNET_FIXED = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2",
               "add_embedding.linear_1": "label_emb.0.0", "add_embedding.linear_2": "label_emb.0.2"}
_VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}


def diffusers_to_original(unet, vae, text_encoder, text_layout: str | None = None) -> dict[str, torch.Tensor]:
    """One original-layout state dict for the three models.

    text_layout: "clip" (SD 1.x) or "openclip" (SD 2.x); by default OpenCLIP when the text encoder uses
    plain GELU (OpenCLIP ViT-H does, OpenAI's CLIP uses quick GELU).
    """
    if text_layout is None:
        text_layout = "openclip" if text_encoder.config.hidden_act == "gelu" else "clip"
    state = {}
    state.update(unet_to_original(unet))
    state.update(vae_to_original(vae))
    if text_layout == "openclip":
        state.update(text_encoder_to_openclip(text_encoder))
    elif text_layout == "clip":
        state.update(text_encoder_to_clip(text_encoder))
    else:
        raise ValueError(f"unknown text layout {text_layout!r}")
    return state


def sdxl_to_original(unet, vae, text_encoder, text_encoder_2) -> dict[str, torch.Tensor]:
    """One original-layout (SDXL base) state dict: UNet, VAE, CLIP-L and OpenCLIP ViT-bigG with projection."""
    state = {}
    state.update(unet_to_original(unet))
    state.update(vae_to_original(vae))
    state.update(text_encoder_to_clip(text_encoder, SDXL_CLIP_PREFIX))
    state.update(text_encoder_to_openclip(text_encoder_2, SDXL_OPENCLIP_PREFIX))
    return state


def _rename_resnet(rest: str) -> str:
    for new, old in _RESNET_UNET:
        if rest.startswith(new + "."):
            return old + rest[len(new):]
    raise KeyError(rest)


def _unet_key(key: str, layers: int, up_has_attention: set[int]) -> str:
    """The original name of one diffusers UNet parameter."""
    per_level = layers + 1
    for new, old in _UNET_FIXED.items():
        if key.startswith(new + "."):
            return old + key[len(new):]
    if m := re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = 1 + level * per_level + layer
        return f"input_blocks.{index}.0.{_rename_resnet(rest)}" if kind == "resnets" else f"input_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"input_blocks.{1 + int(m[1]) * per_level + layers}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"middle_block.{2 * int(m[1])}.{_rename_resnet(m[2])}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key):
        return f"middle_block.1.{m[1]}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key):
        level, kind, layer, rest = int(m[1]), m[2], int(m[3]), m[4]
        index = level * per_level + layer
        return f"output_blocks.{index}.0.{_rename_resnet(rest)}" if kind == "resnets" else f"output_blocks.{index}.1.{rest}"
    if m := re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        level = int(m[1])
        slot = 2 if level in up_has_attention else 1
        return f"output_blocks.{level * per_level + layers}.{slot}.conv.{m[2]}"
    raise KeyError(f"no original name for UNet parameter {key!r}")


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    layers = unet.config.layers_per_block
    if not isinstance(layers, int):
        raise ValueError("only a UNet with the same number of layers in every level can be converted")
    up_has_attention = {i for i, block in enumerate(unet.up_blocks) if getattr(block, "attentions", None)}
    return {UNET_PREFIX + _unet_key(k, layers, up_has_attention): v.detach().clone()
            for k, v in unet.state_dict().items()}


def _vae_key(key: str, num_up: int) -> str:
    """The original name of one diffusers VAE parameter."""
    key = key.replace("conv_norm_out.", "norm_out.")
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key):
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)", key):
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION[m[2]]}.{m[3]}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key):
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key):
        return f"decoder.up.{num_up - 1 - int(m[1])}.block.{m[2]}.{m[3].replace('conv_shortcut', 'nin_shortcut')}"
    if m := re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key):
        return f"decoder.up.{num_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.(conv_in|conv_out|norm_out)\.(weight|bias)|(post_)?quant_conv\.(weight|bias)", key):
        return key
    raise KeyError(f"no original name for VAE parameter {key!r}")


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    num_up = len(vae.decoder.up_blocks)
    out = {}
    for key, value in vae.state_dict().items():
        name = _vae_key(key, num_up)
        value = value.detach().clone()
        if ".mid.attn_1." in name and name.endswith(".weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original attention uses 1x1 convolutions
        out[VAE_PREFIX + name] = value
    return out


def _text_state(text_encoder) -> dict[str, torch.Tensor]:
    """The text encoder's parameters without the `text_model.` wrapper older transformers versions add."""
    return {k.removeprefix("text_model."): v.detach().clone() for k, v in text_encoder.state_dict().items()}


def text_encoder_to_clip(text_encoder, prefix: str = CLIP_PREFIX) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in _text_state(text_encoder).items()}


def text_encoder_to_openclip(text_encoder, prefix: str = OPENCLIP_PREFIX) -> dict[str, torch.Tensor]:
    """OpenCLIP names, q/k/v fused into `in_proj`; `text_projection` as OpenCLIP multiplies by it (``x @ P``):
    the transpose of a projecting encoder's linear weight, or an identity as SD 2 files carry one."""
    state = _text_state(text_encoder)
    projection = state.pop("text_projection.weight", None)
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
    }
    state.pop("embeddings.position_ids", None)
    for layer in range(text_encoder.config.num_hidden_layers):
        src, dst = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for part in ("weight", "bias"):
            out[dst + f"attn.in_proj_{part}"] = torch.cat(
                [state.pop(src + f"self_attn.{p}_proj.{part}") for p in ("q", "k", "v")])
            out[dst + f"attn.out_proj.{part}"] = state.pop(src + f"self_attn.out_proj.{part}")
            out[dst + f"ln_1.{part}"] = state.pop(src + f"layer_norm1.{part}")
            out[dst + f"ln_2.{part}"] = state.pop(src + f"layer_norm2.{part}")
            out[dst + f"mlp.c_fc.{part}"] = state.pop(src + f"mlp.fc1.{part}")
            out[dst + f"mlp.c_proj.{part}"] = state.pop(src + f"mlp.fc2.{part}")
    if state:
        raise KeyError(f"no OpenCLIP name for text encoder parameters {sorted(state)[:3]}")
    out["text_projection"] = (projection.T.contiguous() if projection is not None
                              else torch.eye(text_encoder.config.hidden_size))
    return {prefix + k: v for k, v in out.items()}
