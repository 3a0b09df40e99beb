"""Textual-inversion embeddings: the vectors (core), their .pt/.safetensors files, PNG-embedded embeddings,
and the embeddings folder (library)."""
