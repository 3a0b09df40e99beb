"""The workspace re-reads the embeddings folder only when something in it changed."""
import torch

from trainer.embeddings.library import Embedding, save_embedding
from trainer.workspace import Folders, Workspace


def test_embeddings_are_reread_only_when_the_folder_changes(tmp_path, demo_model):
    ws = Workspace(Folders(embeddings_dir=tmp_path / "emb"), "cpu", model=demo_model)
    first = ws.embeddings()
    assert first == ({}, {}) and ws.embeddings() is first  # nothing changed: the last read is reused
    save_embedding(Embedding("dropped-in", torch.ones(2, 64)), tmp_path / "emb" / "sub" / "dropped-in.pt")
    loaded, _ = ws.embeddings()
    assert list(loaded) == ["dropped-in"] and loaded["dropped-in"].num_vectors == 2
    save_embedding(Embedding("dropped-in", torch.ones(3, 64)), tmp_path / "emb" / "sub" / "dropped-in.pt")
    assert ws.embeddings()[0]["dropped-in"].num_vectors == 3  # rewritten in place: read again
    (tmp_path / "emb" / "sub" / "dropped-in.pt").unlink()
    assert ws.embeddings()[0] == {}
