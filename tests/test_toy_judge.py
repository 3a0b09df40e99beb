"""The toy-world judge (OpenCV colour and contour analysis, no learned weights) names what a picture shows."""
import random

import cv2
import numpy as np
from PIL import Image

from trainer.toy.judge import judge
from trainer.toy.world import PALETTE, Concept, random_scene, render


def test_names_every_clean_picture_of_the_world():
    rng = random.Random(11)
    for _ in range(120):
        scene = random_scene(rng)
        verdict = judge(render(scene))
        assert (verdict.shape, verdict.colour, verdict.background) == (scene.shape, scene.colour, scene.background)
        assert verdict.shows(Concept(scene.shape, scene.colour, scene.background))


def test_blurred_noisy_pictures_like_a_small_model_draws_are_still_named():
    rng = random.Random(12)
    noise = np.random.default_rng(0)
    right = 0
    for _ in range(100):
        scene = random_scene(rng)
        pixels = cv2.GaussianBlur(np.asarray(render(scene)), (0, 0), 2.0).astype(float)
        pixels = np.clip(pixels + noise.normal(0, 8, pixels.shape) + noise.normal(0, 10, 3), 0, 255).astype(np.uint8)
        verdict = judge(pixels)
        right += (verdict.shape, verdict.colour, verdict.background) == (scene.shape, scene.colour, scene.background)
    assert right >= 95


def test_other_sizes_and_a_plain_picture():
    scene = random_scene(random.Random(3), "triangle", "white", "black")
    verdict = judge(render(scene, 512))
    assert (verdict.shape, verdict.colour, verdict.background) == ("triangle", "white", "black")
    plain = judge(Image.new("RGB", (128, 128), PALETTE["green"]))
    assert plain.shape is None and plain.background == "green" and not plain.shows(Concept(background="green"))
