"""The training dataset: captions, prompts, latent caching and sampling, alpha weights, buckets."""
import random

import numpy as np
import pytest
import torch
from PIL import Image

from helpers_images import make_dataset
from trainer.training.dataset import TextualInversionDataset, build_prompt, filewords_for
from common.errors import UserError


def test_filewords_from_caption_file_or_file_name(tmp_path):
    (tmp_path / "00012-0-a cat.png").write_bytes(b"")
    assert filewords_for(tmp_path / "00012-0-a cat.png") == "a cat"
    (tmp_path / "dog.png").write_bytes(b"")
    (tmp_path / "dog.txt").write_text("a good dog, sitting\n")
    assert filewords_for(tmp_path / "dog.png") == "a good dog, sitting"
    assert filewords_for(tmp_path / "dog.png", word_regex=r"\w+", join_string="_") == "a_good_dog_sitting"


def test_template_line_is_chosen_afresh_and_tags_shuffle_and_drop():
    lines = ["one [name]", "two [name], [filewords]", "three [filewords]"]
    rng = random.Random(0)
    prompts = {build_prompt(lines, "emb", "a,b,c", rng) for _ in range(50)}
    assert prompts == {"one emb", "two emb, a,b,c", "three a,b,c"}
    shuffled = {build_prompt(["[filewords]"], "emb", "a,b,c,d", rng, shuffle_tags=True) for _ in range(50)}
    assert len(shuffled) > 5 and all(sorted(p.split(",")) == list("abcd") for p in shuffled)
    dropped = [build_prompt(["[filewords]"], "emb", "a,b,c,d", rng, tag_dropout=0.5) for _ in range(200)]
    lengths = [len(p.split(",")) if p else 0 for p in dropped]
    assert 1.0 < np.mean(lengths) < 3.0


def test_latents_are_cached_once_and_sampled_as_asked(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64))
    once = TextualInversionDataset(demo_model, folder, 64, 64, latent_sampling="once", seed=1)
    det = TextualInversionDataset(demo_model, folder, 64, 64, latent_sampling="deterministic", seed=1)
    rnd = TextualInversionDataset(demo_model, folder, 64, 64, latent_sampling="random", seed=1)
    assert len(once) == 4 and once.samples[0].latent.shape == (4, 8, 8)
    assert not torch.equal(once.samples[0].latent, det.samples[0].latent)  # a posterior sample vs its mean
    gen = torch.Generator().manual_seed(0)
    first = [b.latents for b in det.epoch(1, random.Random(0), gen)]
    second = [b.latents for b in det.epoch(1, random.Random(0), gen)]
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # deterministic: the same every epoch
    first = [b.latents for b in rnd.epoch(1, random.Random(0), gen)]
    second = [b.latents for b in rnd.epoch(1, random.Random(0), gen)]
    assert not any(torch.equal(a, b) for a, b in zip(first, second))  # random: re-sampled every time


def test_no_resize_groups_sizes_into_buckets(tmp_path, demo_model):
    folder = tmp_path / "data"
    folder.mkdir()
    for i, size in enumerate([(64, 64), (64, 64), (96, 64), (100, 70), (1, 1), (200, 40)]):
        Image.new("RGB", size, (i * 40, 90, 200)).save(folder / f"img{i}.png")
    ds = TextualInversionDataset(demo_model, folder, resize=False, seed=0)
    assert [(name, "smaller than 64 px" in reason) for name, reason in ds.report.skipped] == [
        ("img4.png", True), ("img5.png", True)]  # too small to train on at their own size
    assert ds.report.buckets == {(64, 64): 2, (96, 64): 2}  # 100x70 is trimmed to multiples of 8
    shapes = [tuple(b.latents.shape) for b in ds.epoch(2, random.Random(0), torch.Generator())]
    assert sorted(shapes) == [(2, 4, 8, 8), (2, 4, 8, 12)]  # each batch from one bucket


def test_alpha_channel_becomes_a_loss_weight(tmp_path, demo_model):
    folder = tmp_path / "data"
    folder.mkdir()
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., :3] = 128
    rgba[:, 32:, 3] = 255  # right half opaque
    Image.fromarray(rgba, "RGBA").save(folder / "half.png")
    Image.new("RGB", (64, 64), "red").save(folder / "plain.png")
    ds = TextualInversionDataset(demo_model, folder, 64, 64, use_alpha_weight=True)
    weights = {s.path.name: s.weight for s in ds.samples}
    w = weights["half.png"]
    assert w.min() == 0 and torch.isclose(w.mean(), torch.tensor(1.0))
    assert w[:, :, :3].sum() == 0 and (w[:, :, 5:] > 1).all()
    assert weights["plain.png"] is None
    batch = next(ds.epoch(2, random.Random(0), torch.Generator()))
    assert batch.weights is not None and batch.weights.shape == (2, 4, 8, 8)


def test_unreadable_files_are_skipped_and_named(tmp_path, demo_model):
    folder = make_dataset(tmp_path / "data", size=(64, 64), count=2)
    (folder / "broken.png").write_bytes(b"not an image at all")
    (folder / "notes.md").write_text("ignored: not an image suffix")
    ds = TextualInversionDataset(demo_model, folder, 64, 64)
    assert len(ds) == 2 and [name for name, _ in ds.report.skipped] == ["broken.png"]


def test_empty_or_missing_dataset_is_a_sentence(tmp_path, demo_model):
    with pytest.raises(UserError, match="does not exist"):
        TextualInversionDataset(demo_model, tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no images"):
        TextualInversionDataset(demo_model, tmp_path / "empty")
