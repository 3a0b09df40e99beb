"""The demo model's toy world: seeded pictures, the issue's palette, captions, concepts and datasets."""
import random

import numpy as np
import pytest
from PIL import Image

from helpers_cli import run_cli
from common.errors import UserError
from trainer.toy.world import (COLOURS, PALETTE, SHAPES, Concept, caption, parse_concept, random_scene, render,
                               write_dataset)


def test_same_seed_same_scenes_pixels_and_captions():
    def draw(seed):
        rng = random.Random(seed)
        scenes = [random_scene(rng) for _ in range(6)]
        return scenes, [np.asarray(render(s)).tobytes() for s in scenes], [caption(s, rng) for s in scenes]

    assert draw(7) == draw(7)
    assert draw(7)[1] != draw(8)[1]


def test_pictures_use_the_issue_palette_with_the_shape_at_35_to_65_percent():
    assert PALETTE["orange"] == (245, 140, 30) and PALETTE["blue"] == (40, 80, 220) and len(PALETTE) == 8
    rng = random.Random(0)
    seen = set()
    for _ in range(60):
        scene = random_scene(rng)
        seen.add(scene.shape)
        pixels = np.asarray(render(scene)).astype(int)
        assert scene.colour != scene.background
        assert tuple(pixels[0, 0]) == PALETTE[scene.background]  # corners are plain background
        shape_pixels = (np.abs(pixels - PALETTE[scene.colour]).sum(axis=2) == 0)
        ys, xs = np.nonzero(shape_pixels)
        extent = max(xs.max() - xs.min(), ys.max() - ys.min()) + 1
        assert 0.30 * 128 <= extent <= 0.66 * 128, scene
    assert seen == set(SHAPES)


def test_captions_are_plain_english_the_clip_tokenizer_knows():
    from trainer.models.tokenizers import load_tokenizer

    tokenizer = load_tokenizer()
    scene = random_scene(random.Random(1), "star", "yellow", "purple")
    captions = {caption(scene, random.Random(i)) for i in range(40)}
    assert "a yellow star on a purple background" in captions and len(captions) >= 4
    for text in captions:
        words = tokenizer.tokenize(text)
        assert all(w.endswith("</w>") for w in words)  # every word is one whole token, none split into pieces


def test_concepts_parse_and_unknown_words_are_refused_with_the_known_ones():
    assert parse_concept("orange circle on a blue background") == Concept("circle", "orange", "blue")
    assert parse_concept("a star") == Concept("star", None, None)
    assert parse_concept("yellow stars, purple background") == Concept("star", "yellow", "purple")
    with pytest.raises(UserError, match=r"'dog'.*circle, square, triangle, star.*red, green"):
        parse_concept("a purple dog")
    with pytest.raises(UserError, match="cannot be seen"):
        parse_concept("red circle on red")


def test_dataset_has_captions_only_of_its_concept_and_is_not_clobbered(tmp_path):
    paths = write_dataset(tmp_path / "d", parse_concept("orange circle on a blue background"), count=5, seed=3)
    assert len(paths) == 5 and all(p.with_suffix(".txt").is_file() for p in paths)
    for path in paths:
        text = path.with_suffix(".txt").read_text()
        assert "orange" in text and "circle" in text and "blue" in text
        assert Image.open(path).size == (128, 128)
    before = paths[0].read_bytes()
    with pytest.raises(UserError, match="already has pictures"):
        write_dataset(tmp_path / "d", Concept("star"), count=5, seed=3)
    write_dataset(tmp_path / "d", parse_concept("orange circle on a blue background"), count=5, seed=9, overwrite=True)
    assert paths[0].read_bytes() != before


def test_make_demo_dataset_command(tmp_path):
    code, out, err = run_cli(["make-demo-dataset", "pics", "--concept", "green triangle on black", "--count", "4"],
                             tmp_path)
    assert code == 0, err
    assert len(list((tmp_path / "pics").glob("*.png"))) == 4 and len(list((tmp_path / "pics").glob("*.txt"))) == 4
    assert "green triangle on a black background" in out

    code, out, err = run_cli(["make-demo-dataset", "other", "--concept", "a purple dog"], tmp_path)
    assert code == 2 and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and "'dog'" in err and "circle" in err
    assert not (tmp_path / "other").exists()

    code, out, err = run_cli(["make-demo-dataset", "pics", "--concept", "green triangle on black", "--count", "4"],
                             tmp_path)
    assert code == 2 and "already has pictures" in err
