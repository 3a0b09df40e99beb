"""The on-disk latent cache: warm runs skip the VAE, changes re-encode only what changed, bad files are rebuilt."""
import copy
import dataclasses
import random

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from helpers_images import make_dataset
from trainer.training.dataset import TextualInversionDataset
from trainer.training.latent_cache import LatentCache, vae_identity


class EncodeCounter:
    """Counts VAE encoder passes through a forward hook (removed on exit)."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __enter__(self):
        self.handle = self.model.vae.encoder.register_forward_hook(lambda *_: self._count())
        return self

    def _count(self):
        self.calls += 1

    def __exit__(self, *exc):
        self.handle.remove()


def build(model, folder, cache, **kwargs):
    with EncodeCounter(model) as counter:
        ds = TextualInversionDataset(model, folder, 64, 64, seed=3, cache_dir=cache, **kwargs)
    return ds, counter.calls


def cache_files(cache):
    return sorted(cache.rglob("*.safetensors"))


def test_second_run_reads_latents_from_disk_without_the_vae(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64))
    cache = tmp_path / "cache"
    cold, cold_calls = build(demo_model, folder, cache, latent_sampling="once")
    assert cold_calls == 4 and cold.report.cached == 0 and len(cache_files(cache)) == 4
    warm, warm_calls = build(demo_model, folder, cache, latent_sampling="once")
    assert warm_calls == 0 and warm.report.cached == 4
    for a, b in zip(cold.samples, warm.samples):  # the same seed draws the very same "once" samples
        assert a.path == b.path and a.filewords == b.filewords and torch.equal(a.latent, b.latent)
        assert a.original_size == b.original_size == (64, 64)
    # One entry serves every sampling method.
    det, calls = build(demo_model, folder, cache, latent_sampling="deterministic")
    rnd, calls_rnd = build(demo_model, folder, cache, latent_sampling="random")
    assert calls == calls_rnd == 0 and len(cache_files(cache)) == 4
    assert not torch.equal(det.samples[0].latent, cold.samples[0].latent)
    assert rnd.samples[0].latent_std is not None and (rnd.samples[0].latent_std > 0).all()


def test_changed_image_size_or_vae_re_encodes_only_what_changed(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64))
    cache = tmp_path / "cache"
    first, _ = build(demo_model, folder, cache, latent_sampling="deterministic")
    changed = sorted(folder.glob("*.png"))[1]
    Image.fromarray(np.full((64, 64, 3), 200, np.uint8)).save(changed)
    second, calls = build(demo_model, folder, cache, latent_sampling="deterministic")
    assert calls == 1 and second.report.cached == 3
    assert not torch.equal(first.samples[1].latent, second.samples[1].latent)
    assert torch.equal(first.samples[0].latent, second.samples[0].latent)

    with EncodeCounter(demo_model) as counter:  # another size: new entries beside the old ones
        TextualInversionDataset(demo_model, folder, 72, 72, cache_dir=cache)
    assert counter.calls == 4 and len(cache_files(cache)) == 9

    other_vae = copy.deepcopy(demo_model.vae)
    with torch.no_grad():
        other_vae.encoder.conv_in.weight.mul_(1.01)
    other = dataclasses.replace(demo_model, vae=other_vae)
    assert vae_identity(other_vae) != vae_identity(demo_model.vae)
    assert vae_identity(copy.deepcopy(demo_model.vae)) == vae_identity(demo_model.vae)
    _, calls = build(other, folder, cache)
    assert calls == 4
    decoder_only = copy.deepcopy(demo_model.vae)  # a fine-tuned decoder encodes exactly as before
    with torch.no_grad():
        decoder_only.decoder.conv_out.weight.mul_(1.5)
    _, calls = build(dataclasses.replace(demo_model, vae=decoder_only), folder, cache)
    assert calls == 0


def test_corrupt_foreign_or_tampered_files_are_rebuilt_never_trusted(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64), count=3)
    cache = tmp_path / "cache"
    first, _ = build(demo_model, folder, cache, latent_sampling="deterministic")
    files = cache_files(cache)
    by_source = {}
    from safetensors import safe_open

    for path in files:
        with safe_open(str(path), framework="pt") as f:
            by_source[f.metadata()["source"]] = path
    names = sorted(by_source)
    truncated = by_source[names[0]]
    truncated.write_bytes(truncated.read_bytes()[:100])
    foreign = by_source[names[1]]  # a well-formed file that belongs to another key, copied over this one
    other = by_source[names[2]]
    foreign.write_bytes(other.read_bytes())
    with safe_open(str(other), framework="pt") as f:  # and one with NaNs but the right key
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    tensors["mean"][0, 0, 0] = float("nan")
    save_file(tensors, str(other), metadata=meta)

    second, calls = build(demo_model, folder, cache, latent_sampling="deterministic")
    assert calls == 3 and second.report.cached == 0
    for a, b in zip(first.samples, second.samples):
        assert torch.allclose(a.latent, b.latent) and torch.isfinite(b.latent).all()
    third, calls = build(demo_model, folder, cache, latent_sampling="deterministic")
    assert calls == 0 and third.report.cached == 3  # rebuilt files are good again

    wrong_shape = LatentCache(cache, vae_identity(demo_model.vae))
    key = truncated.stem
    assert wrong_shape.load(key, 4, (8, 8)) is not None
    assert wrong_shape.load(key, 4, (9, 9)) is None and wrong_shape.load(key, 3) is None


def test_alpha_weights_come_back_from_the_cache(tmp_path, demo_model):
    folder = tmp_path / "data"
    folder.mkdir()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 90
    rgba[:, 32:, 3] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "half.png")
    cache = tmp_path / "cache"
    cold, _ = build(demo_model, folder, cache, use_alpha_weight=True)
    warm, calls = build(demo_model, folder, cache, use_alpha_weight=True)
    assert calls == 0 and torch.equal(cold.samples[0].weight, warm.samples[0].weight)
    assert warm.samples[0].weight[:, :, :3].sum() == 0
    unweighted, _ = build(demo_model, folder, cache)
    assert unweighted.samples[0].weight is None


def test_without_a_cache_folder_nothing_is_written(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64), count=2)
    ds, calls = build(demo_model, folder, None)
    assert calls == 2 and ds.cache_folder is None and list(tmp_path.rglob("*.safetensors")) == []
    batch = next(ds.epoch(2, random.Random(0), torch.Generator()))
    assert batch.latents.shape == (2, 4, 8, 8)


@pytest.mark.parametrize("setting", ["", "custom"])
def test_training_keeps_the_cache_where_the_settings_say(tmp_path, demo_model, setting):
    from helpers_cli import workdir
    from trainer.embeddings.library import create_embedding
    from trainer.training.textual_inversion import train_embedding
    from trainer.training.config import TrainConfig

    work = workdir(tmp_path)
    make_dataset(work / "data", size=(64, 64), count=2)
    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "cached", init_text="photo",
                     embeddings_dir=work / "embeddings")
    custom = str(tmp_path / "my-cache") if setting else ""
    messages = []

    def run(steps):
        cfg = TrainConfig(name="cached", dataset=str(work / "data"), log_dir=str(work / "logs"), width=64,
                          height=64, steps=steps, save_every=0, preview_every=0, seed=1, latent_cache_dir=custom)
        train_embedding(demo_model, cfg, work / "embeddings", work / "textual_inversion_templates",
                        progress=lambda e: messages.append(getattr(e, "text", "")))

    run(1)
    run(2)  # a resume
    expected = tmp_path / "my-cache" if setting else work / "logs" / "latent_cache"
    assert len(list(expected.rglob("*.safetensors"))) == 2
    dataset_lines = [m for m in messages if m.startswith("Dataset:")]
    assert f"(0 from the latent cache in {expected}" in dataset_lines[0]
    assert f"(2 from the latent cache in {expected}" in dataset_lines[1]
