"""Hypernetworks inside the UNet: a diffusers attention processor we own, and `<hypernet:name:multiplier>` tags.

How a hypernetwork acts (the reference's semantics): in every attention layer, the *context* - the text
conditioning for cross-attention (attn2), the hidden states themselves for self-attention (attn1) - is given to
the module pair of its width, if the hypernetwork has one. The K MLP's output feeds ``to_k``, the V MLP's output
feeds ``to_v``; the query is untouched. Several hypernetworks stack: each rewrites what the previous one made.

Plugging in uses diffusers' own extension point, the per-module ``processor``, and nothing else:

    with apply_hypernetworks(unet, [(hypernetwork, 1.0)]):
        unet(...)            # previous processors are restored on exit

The stack in force is kept per thread, so a training job and a txt2img request sharing one UNet in two threads
never see each other's hypernetworks; processors are installed while at least one thread uses them. Attention
whose context width no active hypernetwork knows runs through the processor that was there before, unchanged.
(The per-thread stack assumes the UNet's forward runs in the calling thread: no gradient checkpointing.)
"""
from __future__ import annotations

import contextlib
import math
import re
import threading
from collections.abc import Mapping
from os import PathLike

import torch
import torch.nn.functional as F

from common.errors import UserError

#: `<hypernet:name>` or `<hypernet:name:multiplier>`, the reference's extra-network syntax for hypernetworks.
HYPERNET_TAG = re.compile(r"<hypernet:([^>]+)>")

_INSTALL_LOCK = threading.Lock()  # guards installing/removing processors (not state: the users live per UNet)


class _ActiveStacks:
    """Shared by all processors installed on one UNet: how many `apply_hypernetworks` blocks use them, and
    each thread's stack of (hypernetwork, multiplier)."""

    def __init__(self):
        self.users = 0
        self.local = threading.local()

    def current(self) -> tuple:
        return getattr(self.local, "stack", ())


class HypernetworkAttnProcessor:
    """Attention with hypernetwork-rewritten keys and values (scaled dot-product attention otherwise as diffusers'
    default processor does it). Delegates to `previous` when no active hypernetwork has this context width."""

    def __init__(self, stacks: _ActiveStacks, previous):
        self.stacks = stacks
        self.previous = previous

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None,
                 **kwargs):
        stack = self.stacks.current()
        if encoder_hidden_states is not None:
            context_width = encoder_hidden_states.shape[-1]
        else:  # self-attention: (batch, tokens, channels), or (batch, channels, height, width)
            context_width = hidden_states.shape[1 if hidden_states.ndim == 4 else -1]
        pairs = [(hn.pair(context_width), multiplier) for hn, multiplier in stack]
        pairs = [(pair, multiplier) for pair, multiplier in pairs if pair is not None]
        if not pairs:
            extra = {"temb": temb} if temb is not None else {}
            return self.previous(attn, hidden_states, encoder_hidden_states=encoder_hidden_states,
                                 attention_mask=attention_mask, **extra, **kwargs)
        return _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, pairs)


def rewrite_context(context: torch.Tensor, pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(context for the keys, context for the values) after each (K MLP, V MLP) pair in turn."""
    context_k = context_v = context
    for (k_mlp, v_mlp), multiplier in pairs:
        context_k = k_mlp(context_k.float(), multiplier).to(context.dtype)
        context_v = v_mlp(context_v.float(), multiplier).to(context.dtype)
    return context_k, context_v


def _attention(attn, hidden_states, encoder_hidden_states, attention_mask, temb, pairs):
    residual = hidden_states
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    image_shape = None
    if hidden_states.ndim == 4:  # (batch, channels, height, width) -> (batch, positions, channels)
        image_shape = hidden_states.shape
        hidden_states = hidden_states.flatten(2).transpose(1, 2)
    if attn.group_norm is not None:
        hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

    if encoder_hidden_states is None:
        context = hidden_states  # self-attention: the hidden states are the context
    else:
        context = attn.norm_encoder_hidden_states(encoder_hidden_states) if attn.norm_cross else encoder_hidden_states
    context_k, context_v = rewrite_context(context, pairs)

    batch = hidden_states.shape[0]
    query, key, value = attn.to_q(hidden_states), attn.to_k(context_k), attn.to_v(context_v)
    head_dim = key.shape[-1] // attn.heads

    def heads(t):  # (batch, tokens, heads * head_dim) -> (batch, heads, tokens, head_dim)
        return t.view(batch, -1, attn.heads, head_dim).transpose(1, 2)

    query, key, value = heads(query), heads(key), heads(value)
    if attn.norm_q is not None:
        query = attn.norm_q(query)
    if attn.norm_k is not None:
        key = attn.norm_k(key)
    mask = None
    if attention_mask is not None:
        mask = attn.prepare_attention_mask(attention_mask, context.shape[1], batch)
        mask = mask.view(batch, attn.heads, -1, mask.shape[-1])

    out = F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=0.0, is_causal=False,
                                         scale=attn.scale)
    out = out.transpose(1, 2).reshape(batch, -1, attn.heads * head_dim).to(query.dtype)
    out = attn.to_out[1](attn.to_out[0](out))  # projection, then dropout
    if image_shape is not None:
        out = out.transpose(-1, -2).reshape(image_shape)
    if attn.residual_connection:
        out = out + residual
    return out / attn.rescale_output_factor


def _attention_modules(unet) -> list:
    from diffusers.models.attention_processor import Attention

    return [module for module in unet.modules() if isinstance(module, Attention)]


def _install(unet) -> _ActiveStacks:
    with _INSTALL_LOCK:
        modules = _attention_modules(unet)
        installed = next((m.processor for m in modules if isinstance(m.processor, HypernetworkAttnProcessor)), None)
        stacks = installed.stacks if installed is not None else _ActiveStacks()
        if installed is None:
            for module in modules:
                module.set_processor(HypernetworkAttnProcessor(stacks, module.processor))
        stacks.users += 1
        return stacks


def _uninstall(unet, stacks: _ActiveStacks):
    with _INSTALL_LOCK:
        stacks.users -= 1
        if stacks.users > 0:
            return
        for module in _attention_modules(unet):
            processor = module.processor
            if isinstance(processor, HypernetworkAttnProcessor) and processor.stacks is stacks:
                module.set_processor(processor.previous)


@contextlib.contextmanager
def apply_hypernetworks(unet, stack):
    """Apply `stack` = [(Hypernetwork, multiplier), ...] to `unet`'s attention inside the block (this thread).

    Entries with multiplier 0 are dropped (0 means none); with nothing left the UNet is not touched at all. The
    hypernetworks are moved to the UNet's device. Nested blocks in one thread: the inner stack replaces the outer
    one until it ends."""
    stack = tuple((hn, float(multiplier)) for hn, multiplier in stack if float(multiplier) != 0.0)
    if not stack:
        yield
        return
    device = next(unet.parameters()).device
    for hypernetwork, _ in stack:
        hypernetwork.to(device)
    stacks = _install(unet)
    outer = stacks.current()
    stacks.local.stack = stack
    try:
        yield
    finally:
        stacks.local.stack = outer
        _uninstall(unet, stacks)


# ------------------------------------------------------------------------------------------ prompt tags


def extract_hypernetwork_tags(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove every `<hypernet:name[:multiplier]>` from `prompt`; returns (prompt without them, [(name, mult)]).

    The multiplier defaults to 1.0; a multiplier that is not a number is a UserError."""
    found = []

    def take(match):
        items = match.group(1).split(":")
        name = items[0].strip()
        multiplier = 1.0
        if len(items) > 1 and items[1].strip():
            try:
                multiplier = float(items[1])
            except ValueError:
                raise UserError(f"The multiplier in {match.group(0)} is not a number; write it like "
                                f"<hypernet:{name}:0.8>.") from None
            if not math.isfinite(multiplier):
                raise UserError(f"The multiplier in {match.group(0)} is not a finite number; write it like "
                                f"<hypernet:{name}:0.8>.")
        if name:
            found.append((name, multiplier))
        return ""

    return HYPERNET_TAG.sub(take, prompt or ""), found


def as_hypernetwork_source(hypernetworks) -> Mapping:
    """A mapping name -> Hypernetwork from what callers pass: a mapping, a folder path, or None (nothing)."""
    if hypernetworks is None:
        return {}
    if isinstance(hypernetworks, (str, PathLike)):
        from trainer.hypernetworks.network import HypernetworkFolder

        return HypernetworkFolder(hypernetworks)
    return hypernetworks


def resolve_prompt_hypernetworks(prompt: str, hypernetworks=None) -> tuple[str, list]:
    """(prompt without its hypernet tags, [(Hypernetwork, multiplier)]) - names looked up in `hypernetworks`
    (a mapping or a folder path; exact name first, then ignoring case). An unknown name is a UserError."""
    text, tags = extract_hypernetwork_tags(prompt)
    if not tags:
        return text, []
    source = as_hypernetwork_source(hypernetworks)
    stack = []
    for name, multiplier in tags:
        key = name if name in source else next((n for n in source if n.lower() == name.lower()), None)
        if key is None:
            known = ", ".join(sorted(source)) or "none"
            raise UserError(f"Hypernetwork '{name}' in the prompt was not found (available: {known}).")
        stack.append((source[key], multiplier))
    return text, stack


__all__ = [
    "HYPERNET_TAG", "HypernetworkAttnProcessor", "apply_hypernetworks", "as_hypernetwork_source",
    "extract_hypernetwork_tags", "resolve_prompt_hypernetworks", "rewrite_context",
]
