"""Stage 3 of the demo's pretraining teaches one-word codes for scenes; optional noise in the directions no code uses
teaches the model to ignore them, without touching what a code says."""
import random

import torch

from test_pretrain_whitening import load_script
from trainer.toy.world import Scene


def codes(script, off_book_jitter: float, count: int = 200) -> torch.Tensor:
    book = script.code_book(4, 0.015)
    projection = script.off_book(book) if off_book_jitter else None
    scene = Scene("circle", "red", "green", 0.5, 0.5, 0.5)
    return torch.stack([script.scene_code(book, scene, random.Random(i), torch.Generator().manual_seed(i), 0.006,
                                          off_book_jitter, projection)
                        for i in range(count)])  # code i from seed i, with or without the extra noise


def test_off_book_noise_leaves_what_the_code_says_alone():
    script = load_script()
    book = script.code_book(4, 0.015)
    projection = script.off_book(book)
    plain, noisy = codes(script, 0.0), codes(script, 0.05)
    in_book = torch.eye(projection.shape[0]) - projection
    # Inside the book's span, the codes are the same numbers with or without the extra noise...
    assert torch.allclose(plain @ in_book.T, noisy @ in_book.T, atol=1e-5)
    # ...and outside it the extra noise is there, at the asked size: 44 of 64 directions at std 0.05.
    off = (noisy - plain).norm(dim=1)
    assert 0.25 < off.mean().item() < 0.4
    assert (plain @ projection.T).norm(dim=1).mean().item() < 0.06  # the plain jitter alone: std 0.006


def test_without_off_book_noise_the_codes_are_as_before():
    script = load_script()
    book = script.code_book(4, 0.015)
    rng, generator = random.Random(0), torch.Generator().manual_seed(5)
    scene = Scene("circle", "red", "green", 0.5, 0.5, 0.5)
    first = script.scene_code(book, scene, rng, generator, 0.006)
    rng, generator = random.Random(0), torch.Generator().manual_seed(5)
    weights = [rng.uniform(0.5, 1.5) for _ in range(3)]
    expected = (book["shape"]["circle"] * weights[0] + book["colour"]["red"] * weights[1]
                + book["background"]["green"] * weights[2] + torch.randn(64, generator=generator) * 0.006)
    assert torch.allclose(first, expected)
