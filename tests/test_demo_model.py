"""The shipped demo model knows its toy world, and textual inversion teaches it a new word (judged by OpenCV)."""
import random

import numpy as np
import torch

from trainer.models.demo import DEMO_WEIGHTS
from trainer.models.loading import file_sha256
from trainer.toy.eval import learn_concept, render_and_judge, world_prompts, world_score
from trainer.toy.judge import judge
from trainer.toy.world import Concept, random_scene, render, parse_concept

ROOT = DEMO_WEIGHTS.parent.parent.parent.parent


def test_the_demo_loads_from_its_small_shipped_weights(demo_model):
    assert DEMO_WEIGHTS.stat().st_size <= 25 * 1024 * 1024
    assert demo_model.checkpoint_hash == file_sha256(DEMO_WEIGHTS)[:10]
    assert demo_model.native_size == 128 and demo_model.text_width == 64
    assert demo_model.tokenizer.vocab_size == 49408
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in demo_model.unet.parameters())


@torch.no_grad()
def test_its_vae_reconstructs_the_world(demo_model):
    rng = random.Random(5)
    scenes = [random_scene(rng) for _ in range(8)]
    pixels = np.stack([np.asarray(render(s)) for s in scenes])
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1
    decoded = demo_model.vae.decode(demo_model.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    back = ((decoded + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    # grey levels: 4.7 on 64 unseen scenes since stage 4 of the pretraining (18.7 before it)
    assert np.abs(back.astype(float) - pixels).mean() < 8
    named = [judge(image) for image in back]
    assert sum((v.shape, v.colour, v.background) == (s.shape, s.colour, s.background)
               for v, s in zip(named, scenes)) >= 7, [v.describe() for v in named]


def test_txt2img_draws_the_world_prompt_it_is_given(demo_model):
    """bench/ti_learning.py measures 92 % of 64 world prompts drawn exactly as asked (target 60 %)."""
    scenes = world_prompts(8, seed=7)
    result = world_score(demo_model, scenes, seed=20)
    described = [r.verdict.describe() for r in result.rendered]
    assert result.score >= 5 / 8, described
    assert result.part_scores(scenes)["background"] >= 7 / 8, described


def test_a_yellow_star_on_a_purple_background_for_most_seeds(demo_model):
    """The issue's own example prompt (8 of 8 seeds in bench/results/yellow-star.png)."""
    rendered = render_and_judge(demo_model, ["a yellow star on a purple background"] * 4, [1, 2, 3, 4],
                                [Concept("star", "yellow", "purple")] * 4)
    assert sum(r.hit for r in rendered) >= 3, [r.verdict.describe() for r in rendered]


def small_concept_run(demo_model, concept, tmp_path):
    """bench/ti_learning.py's learning run, made small: 200 steps on 8 pictures, 4 previews of 12 sampler steps."""
    return learn_concept(demo_model, concept, tmp_path, ROOT / "textual_inversion_templates", steps=200,
                         previews=4, images=8, preview_steps=12)


def test_textual_inversion_teaches_it_a_new_word(demo_model, tmp_path):
    """A small version of bench/ti_learning.py: an embedding from "*" trained 200 steps on "orange circle on
    a blue background". Before, "*" draws stars; after, every preview is a circle on blue. (Whether the circle is
    orange, or still red or yellow, varies with the run: the benchmark's four runs of 400 steps find it orange in
    25 % of 64 previews, from 6 % to 75 % per run, so only shape and background are asserted here.)"""
    concept = parse_concept("orange circle on a blue background")
    run = small_concept_run(demo_model, concept, tmp_path)
    before, after = run.part_rates(concept, "before"), run.part_rates(concept, "after")
    assert before["shape"] <= 0.25, [r.verdict.describe() for r in run.before]
    assert after["shape"] >= 0.75 and after["background"] >= 0.75, [r.verdict.describe() for r in run.after]


def test_textual_inversion_learns_the_colour_of_a_concept_the_demo_tells_apart(demo_model, tmp_path):
    """The page's and the CLI's default demo concept, a green square on purple: before, "*" draws no green shape;
    after 200 steps the word draws green (seeds 0-2 here: green in 100 %, 100 % and 75 % of the previews;
    bench/ti_learning.py --concept "green square on a purple background": 98 % of 64 previews whole)."""
    concept = parse_concept("green square on a purple background")
    run = small_concept_run(demo_model, concept, tmp_path)
    before, after = run.part_rates(concept, "before"), run.part_rates(concept, "after")
    assert before["colour"] == 0 and run.before_rate == 0, [r.verdict.describe() for r in run.before]
    assert after["colour"] >= 0.75 and after["shape"] >= 0.5, [r.verdict.describe() for r in run.after]


def test_cli_sizes_default_to_the_models_native_size(tmp_path):
    import json

    from helpers_cli import run_cli, workdir

    work = workdir(tmp_path)
    assert run_cli(["make-demo-dataset", "shapes", "--count", 2], work)[0] == 0
    assert run_cli(["create-embedding", "--name", "shape"], work)[0] == 0
    code, out, err = run_cli(["train-embedding", "--name", "shape", "--dataset", "shapes", "--steps", 2,
                              "--save-every", 0, "--preview-every", 0, "--seed", 1, "--quiet"], work)
    assert code == 0, err
    [settings] = (work / "textual_inversion").rglob("settings-*.json")
    assert json.loads(settings.read_text())["width"] == 128 and json.loads(settings.read_text())["height"] == 128
    code, out, err = run_cli(["txt2img", "--prompt", "a red circle", "--steps", 2, "--out", "a.png"], work)
    assert code == 0, err
    from PIL import Image
    assert Image.open(work / "a.png").size == (128, 128)
