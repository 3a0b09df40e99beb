"""Vector health: how long an embedding's vectors are, next to the words they started from and to real tokens.

Embeddings whose vectors grow far longer than any real token's ("overcooked") dominate every prompt they are
in. The norms are compared with the initialisation words' (the vectors at step 0) and with the vocabulary's
typical token (the median row norm of the text encoder's token-embedding table); a warning is given once when
a vector grows beyond GROWTH_LIMIT times the typical token.
"""
import torch

GROWTH_LIMIT = 5.0


def vector_norms(vectors: torch.Tensor) -> list:
    return [round(float(n), 6) for n in vectors.detach().float().reshape(vectors.shape[0], -1).norm(dim=1)]


class VectorHealth:
    """`token_embeddings`: the text encoder's token-embedding weight [vocab, width]; `init_norms`: the norms of
    the initialisation words' vectors (or, when unknown, of the vectors this run starts from, `start_step`)."""

    def __init__(self, token_embeddings: torch.Tensor, init_norms: list, init_step: int = 0):
        tables = token_embeddings if isinstance(token_embeddings, (list, tuple)) else [token_embeddings]
        # SDXL: a vector is both encoders' halves side by side, so a typical token is too (norms add in squares)
        self.token_norm = sum(float(t.detach().float().norm(dim=1).median()) ** 2 for t in tables) ** 0.5
        self.init_norms = list(init_norms)
        self.init_step = init_step
        self.warned = False

    def __call__(self, vectors: torch.Tensor):
        """(columns for validation.csv and the page, a warning the first time a vector grows too long)."""
        norms = vector_norms(vectors)
        ratio = max(norms) / self.token_norm if self.token_norm > 0 else 0.0
        columns = {"norm_mean": round(sum(norms) / len(norms), 6), "norm_max": max(norms),
                   "norms": " ".join(f"{n:.6f}" for n in norms),
                   "init_norm_mean": round(sum(self.init_norms) / len(self.init_norms), 6),
                   "init_step": self.init_step,
                   "token_norm": round(self.token_norm, 6), "max_vs_token": round(ratio, 3)}
        warning = None
        if ratio > GROWTH_LIMIT and not self.warned:
            self.warned = True
            warning = (f"vector norms grew to {ratio:.1f}x a typical token's (max {max(norms):.4f}, typical token "
                       f"{self.token_norm:.4f}, init words {columns['init_norm_mean']:.4f}): the embedding may be "
                       "overcooked; the best step's copy or a lower learning rate may serve better.")
        return columns, warning


def init_norms_from(rows: list, start_vectors: torch.Tensor, start_step: int):
    """(norms, step) of the initialisation words: from a step-0 row of an earlier run's validation.csv when this
    run resumes, else the vectors this run starts from."""
    for row in rows:
        if row.get("step") == "0" and row.get("norms"):
            try:
                norms = [float(n) for n in row["norms"].split()]
            except ValueError:
                continue
            if len(norms) == start_vectors.shape[0]:
                return norms, 0
    return vector_norms(start_vectors), start_step
