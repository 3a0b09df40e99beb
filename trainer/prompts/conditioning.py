"""Prompt -> text-encoder conditioning, as the reference webui computes it.

A prompt is parsed for emphasis (``(word:1.2)``), tokenized without BOS/EOS, and packed into chunks of 75
tokens: ``BREAK`` ends a chunk; when a chunk fills up and its last comma is at most 20 tokens back, the
tokens after that comma move to the next chunk; a textual-inversion embedding is never split between
chunks.  Every chunk is wrapped as BOS + tokens + EOS, padded to 77 and encoded on its own; the outputs are
concatenated.  Each token's output is multiplied by its weight and the chunk is rescaled to keep its
original mean.  Embedding vectors replace the token-embedding layer's output at their positions (before
the position embeddings are added), through a forward hook that lives only for the duration of one call.

Deliberate differences from the reference: the mean is restored per prompt and chunk (the reference takes
it over the whole batch, so a prompt's conditioning depended on what it was batched with), and embedding
positions move along with the tokens that a comma backtrack carries into the next chunk (the reference
leaves them behind).
"""
from __future__ import annotations

import math
import re
import threading
from dataclasses import dataclass, field
from typing import Mapping

import torch

from common.errors import UserError
from trainer.prompts.parser import parse_prompt_attention, prompt_schedule, split_and

CHUNK_LENGTH = 75  # prompt tokens per chunk; BOS and EOS make it 77
COMMA_BACKTRACK = 20  # how far back a comma may be to end a full chunk early
_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")  # <hypernet:name:1.0>, removed before counting tokens
_CACHE_SIZE = 4096


@dataclass
class _Chunk:
    """Up to 75 prompt tokens with their weights; ``fixes`` are (offset, embedding name) slots."""

    tokens: list = field(default_factory=list)
    weights: list = field(default_factory=list)
    fixes: list = field(default_factory=list)


class PromptEncoder:
    """Encode prompts into conditioning tensors ``[batch, 77 * chunks, width]``.

    ``embeddings`` maps textual-inversion names to their vectors (``[n, width]``); they may require grad,
    and gradients reach them.  ``clip_skip`` > 1 takes that hidden state from the end and applies the
    final layer norm, like the reference's "Clip skip" setting.
    """

    def __init__(self, tokenizer, text_encoder, embeddings: Mapping[str, torch.Tensor] = {}, clip_skip: int = 1):
        self.tokenizer = tokenizer
        self.text_encoder = text_encoder
        self.embeddings = {name: vec if vec.dim() == 2 else vec.reshape(1, -1) for name, vec in embeddings.items()}
        self.clip_skip = max(1, int(clip_skip))
        self.bos = tokenizer.bos_token_id
        self.eos = tokenizer.eos_token_id
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos
        comma = tokenizer.convert_tokens_to_ids(",</w>")
        self.comma = comma if comma != tokenizer.unk_token_id else None
        self._chunk_cache: dict[str, tuple[list[_Chunk], int]] = {}

        # Embedding names as CLIP tokens, grouped by first token, longest first (ties: registration order).
        self._by_first_token: dict[int, list[tuple[list[int], str]]] = {}
        names = list(self.embeddings)
        for name, ids in zip(names, self._tokenize([name.lower() for name in names])):
            if ids:
                self._by_first_token.setdefault(ids[0], []).append((ids, name))
        for candidates in self._by_first_token.values():
            candidates.sort(key=lambda entry: len(entry[0]), reverse=True)

    # ------------------------------------------------------------------------------------------ tokenizing

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, truncation=False, add_special_tokens=False)["input_ids"]

    def _embedding_at(self, tokens: list[int], position: int) -> tuple[str | None, int]:
        """The longest embedding name whose tokens start at ``position``, and how many tokens it spans."""
        for ids, name in self._by_first_token.get(tokens[position], ()):
            if tokens[position:position + len(ids)] == ids:
                return name, len(ids)
        return None, 0

    def _chunks(self, prompt: str) -> tuple[list[_Chunk], int]:
        """Split one prompt into chunks; also returns the reference's token count for the counter."""
        cached = self._chunk_cache.get(prompt)
        if cached is not None:
            return cached

        try:
            segments = parse_prompt_attention(prompt)
        except ValueError as error:  # "(word:1.2.3)": the reference fails the same way
            raise UserError(f"The prompt has an emphasis weight that is not a number ({error}).") from None
        chunks: list[_Chunk] = []
        chunk = _Chunk()
        token_count = 0
        last_comma = -1

        def close_chunk(is_last: bool = False) -> None:
            nonlocal chunk, token_count, last_comma
            token_count += len(chunk.tokens) if is_last else CHUNK_LENGTH
            chunks.append(chunk)
            chunk = _Chunk()
            last_comma = -1

        for tokens, (text, weight) in zip(self._tokenize([text for text, _ in segments]), segments):
            if text == "BREAK" and weight == -1:
                close_chunk()
                continue
            position = 0
            while position < len(tokens):
                token = tokens[position]
                if token == self.comma:
                    last_comma = len(chunk.tokens)
                elif len(chunk.tokens) == CHUNK_LENGTH and last_comma != -1 \
                        and len(chunk.tokens) - last_comma <= COMMA_BACKTRACK:
                    # Full chunk with a comma close behind: end the chunk after the comma.
                    cut = last_comma + 1
                    moved = _Chunk(chunk.tokens[cut:], chunk.weights[cut:],
                                   [(offset - cut, name) for offset, name in chunk.fixes if offset >= cut])
                    del chunk.tokens[cut:], chunk.weights[cut:]
                    chunk.fixes = [fix for fix in chunk.fixes if fix[0] < cut]
                    close_chunk()
                    chunk = moved
                if len(chunk.tokens) == CHUNK_LENGTH:
                    close_chunk()

                name, span = self._embedding_at(tokens, position)
                if name is None:
                    chunk.tokens.append(token)
                    chunk.weights.append(weight)
                    position += 1
                    continue
                count = self.embeddings[name].shape[0]
                if count > CHUNK_LENGTH:
                    raise UserError(f"Embedding {name} has {count} vectors; at most {CHUNK_LENGTH} fit in a prompt.")
                if len(chunk.tokens) + count > CHUNK_LENGTH:
                    close_chunk()
                chunk.fixes.append((len(chunk.tokens), name))
                chunk.tokens += [0] * count  # placeholders; the hook puts the vectors there
                chunk.weights += [weight] * count
                position += span

        if chunk.tokens or not chunks:
            close_chunk(is_last=True)

        if len(self._chunk_cache) >= _CACHE_SIZE:
            self._chunk_cache.clear()
        self._chunk_cache[prompt] = (chunks, token_count)
        return chunks, token_count

    def _chunk_ids(self, chunk: _Chunk | None) -> tuple[list[int], list[float]]:
        """77 token ids and weights for a chunk (None: an empty chunk): BOS, tokens, EOS, then padding."""
        tokens, weights = (chunk.tokens, chunk.weights) if chunk is not None else ([], [])
        fill = CHUNK_LENGTH - len(tokens)
        ids = [self.bos] + tokens + [self.eos] * (fill + 1)
        if self.pad != self.eos:  # SD2: everything after the first end-of-text becomes padding
            first_end = ids.index(self.eos)
            ids[first_end + 1:] = [self.pad] * (len(ids) - first_end - 1)
        return ids, [1.0] + weights + [1.0] * (fill + 1)

    # ------------------------------------------------------------------------------------------ public API

    def count_tokens(self, prompt: str, steps: int = 20) -> tuple[int, int]:
        """``(tokens used, chunk limit)`` for a token counter such as "12/75", as the reference's UI counts.

        Extra-network tags are ignored, the prompt is split at AND and expanded over its schedule, and the
        longest of the resulting texts is counted.
        """
        prompt = _EXTRA_NETWORK.sub("", prompt)
        try:
            texts = [entry[1] for text, _weight in split_and(prompt) for entry in prompt_schedule(text, steps)]
        except (ValueError, OverflowError):
            texts = [prompt]
        try:
            used = max(self._chunks(text)[1] for text in texts)
        except UserError:  # half-typed weight such as "(word:." - count the text as it stands
            used = sum(len(ids) for ids in self._tokenize([prompt]))
        return used, math.ceil(max(used, 1) / CHUNK_LENGTH) * CHUNK_LENGTH

    def __call__(self, prompts: list[str]) -> torch.Tensor:
        """Encode ``prompts`` into ``[len(prompts), 77 * chunks, width]``; shorter prompts get empty chunks."""
        return self.encode(prompts)[0]

    def encode(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(conditioning as __call__ returns it, pooled output of each prompt's first chunk or None)``; the
        pooled part comes from `_run_encoder` (SDXL's projecting second encoder has one)."""
        prompts = list(prompts)
        per_prompt = [self._chunks(prompt)[0] for prompt in prompts]
        n_chunks = max(len(chunks) for chunks in per_prompt)

        rows, weights, fixes = [], [], []  # fixes: (row, column, embedding name)
        for chunks in per_prompt:
            for index in range(n_chunks):
                chunk = chunks[index] if index < len(chunks) else None
                ids, row_weights = self._chunk_ids(chunk)
                if chunk is not None:
                    fixes += [(len(rows), offset + 1, name) for offset, name in chunk.fixes]  # +1: BOS
                rows.append(ids)
                weights.append(row_weights)

        layer = self.text_encoder.get_input_embeddings()
        device = layer.weight.device
        ids = torch.tensor(rows, dtype=torch.long, device=device)
        z, pooled = self._encode(ids, layer, fixes)

        multipliers = torch.tensor(weights, dtype=torch.float32, device=z.device).unsqueeze(-1)
        z = _apply_emphasis(z.float(), multipliers).to(z.dtype)
        if pooled is not None:
            pooled = pooled.reshape(len(prompts), n_chunks, -1)[:, 0]
        return z.reshape(len(prompts), n_chunks * z.shape[1], z.shape[2]), pooled

    def _encode(self, ids: torch.Tensor, layer: torch.nn.Module, fixes: list) -> tuple:
        """Run the text encoder on ``ids`` with the embedding vectors spliced into the token embeddings."""
        handle = None
        if fixes:
            handle = layer.register_forward_hook(_EmbeddingSplice(fixes, self.embeddings))
        try:
            return self._run_encoder(ids)
        finally:
            if handle is not None:
                handle.remove()

    def _run_encoder(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(hidden states per token, pooled output or None): the last layer's, or with ``clip_skip`` > 1 that
        hidden state from the end through the final layer norm."""
        if self.clip_skip > 1:
            outputs = self.text_encoder(input_ids=ids, output_hidden_states=True)
            hidden = outputs.hidden_states[-min(self.clip_skip, len(outputs.hidden_states))]
            final_norm = getattr(self.text_encoder, "text_model", self.text_encoder).final_layer_norm
            return final_norm(hidden), None
        return self.text_encoder(input_ids=ids).last_hidden_state, None


def _apply_emphasis(z: torch.Tensor, multipliers: torch.Tensor) -> torch.Tensor:
    """Scale each token's output by its weight, then rescale each chunk (row) back to its original mean.

    A mean that is practically zero (an untrained final layer norm) would make the ratio meaningless;
    such a chunk is left unrescaled.
    """
    weighted = z * multipliers
    original_mean = z.mean(dim=(1, 2), keepdim=True)
    weighted_mean = weighted.mean(dim=(1, 2), keepdim=True)
    floor = 1e-4 * weighted.abs().mean(dim=(1, 2), keepdim=True)
    usable = (original_mean.abs() > floor) & (weighted_mean.abs() > floor)
    safe_mean = torch.where(usable, weighted_mean, torch.ones_like(weighted_mean))
    ratio = torch.where(usable, original_mean / safe_mean, torch.ones_like(weighted_mean))
    return weighted * ratio


class _EmbeddingSplice:
    """Forward hook for the token-embedding layer: puts embedding vectors at their (row, column) slots.

    The text encoder is shared (a training job and a txt2img request may encode at the same moment), and a
    module's hooks run for every caller: the hook only touches the forward pass of the thread that set it."""

    def __init__(self, fixes: list, embeddings: Mapping[str, torch.Tensor]):
        self.fixes = fixes
        self.embeddings = embeddings
        self.thread = threading.get_ident()

    def __call__(self, module, inputs, output: torch.Tensor) -> torch.Tensor | None:
        if threading.get_ident() != self.thread:
            return None  # another caller's forward pass: leave its output alone
        rows, columns, values = [], [], []
        for row, column, name in self.fixes:
            vectors = self.embeddings[name][: output.shape[1] - column]
            rows += [row] * vectors.shape[0]
            columns += range(column, column + vectors.shape[0])
            values.append(vectors)
        index = (torch.tensor(rows, device=output.device), torch.tensor(columns, device=output.device))
        values = torch.cat(values).to(device=output.device, dtype=output.dtype)
        return output.index_put(index, values)  # out of place, so gradients flow to the vectors
