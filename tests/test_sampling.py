"""txt2img over the demo model: samplers by name, seeds, prompt features, infotext files."""
import dataclasses

import numpy as np
import pytest
import torch

from common.errors import UserError
from common.files import save_png
from trainer.models.demo import build_demo_components
from trainer.models.sd_model import SDModel

from trainer.sampling.txt2img import (
    SAMPLERS, ConditioningPlan, Txt2ImgParams, combine_guidance, format_infotext, read_infotext,
    text_at_step, txt2img, validate_params,
)
from trainer.sampling.samplers import make_scheduler


@pytest.fixture(scope="module")
def model():
    return SDModel(name="demo", checkpoint_hash="demo", device=torch.device("cpu"), **build_demo_components())


@pytest.fixture(scope="module")
def v_model(model):
    config = dict(model.scheduler_config, prediction_type="v_prediction")
    return dataclasses.replace(model, scheduler_config=config)


def small(**kwargs):
    values = dict(prompt="a photo of a cat", steps=3, width=64, height=64, seed=123)
    values.update(kwargs)
    return Txt2ImgParams(**values)


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


def generate(model, **kwargs):
    results = txt2img(model, small(**kwargs))
    assert len(results) == 1
    return results[0]


# ----------------------------------------------------------------------------------------- seeds and samplers

def test_same_seed_same_image_and_different_seed_different_image(model):
    first, again, other = generate(model), generate(model), generate(model, seed=124)
    assert first.image.mode == "RGB" and first.image.size == (64, 64)
    assert np.array_equal(pixels(first), pixels(again))
    assert not np.array_equal(pixels(first), pixels(other))
    assert (first.seed, other.seed) == (123, 124)


def test_random_seed_is_reported_and_reproduces(model):
    result = generate(model, seed=-1)
    assert 0 <= result.seed < 2**32
    assert f"Seed: {result.seed}," in result.infotext
    assert np.array_equal(pixels(result), pixels(generate(model, seed=result.seed)))


def test_batch_count_uses_consecutive_seeds(model):
    results = txt2img(model, small(batch_count=2, seed=7))
    assert [r.seed for r in results] == [7, 8]
    assert np.array_equal(pixels(results[1]), pixels(generate(model, seed=8)))


def test_non_square_size(model):
    result = generate(model, width=96, height=64)
    assert result.image.size == (96, 64)
    assert "Size: 96x64" in result.infotext


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sampler_runs_and_is_reproducible(model, sampler):
    result = generate(model, sampler=sampler, steps=2)
    assert result.image.size == (64, 64)
    assert f"Sampler: {sampler}," in result.infotext
    assert np.array_equal(pixels(result), pixels(generate(model, sampler=sampler, steps=2)))


def test_sampler_table_keeps_the_noise_schedule_and_picks_the_solver(model):
    assert SAMPLERS[0] == "Euler a"
    for name in ("Euler a", "Euler", "LMS", "Heun", "DPM2", "DPM2 a", "DPM++ 2M", "DPM++ 2M Karras",
                 "DPM++ SDE", "DDIM", "UniPC", "PLMS"):
        assert name in SAMPLERS
    karras = make_scheduler("DPM++ 2M Karras", model.scheduler_config)
    assert type(karras).__name__ == "DPMSolverMultistepScheduler"
    assert karras.config.use_karras_sigmas and karras.config.algorithm_type == "dpmsolver++"
    assert not make_scheduler("DPM++ 2M", model.scheduler_config).config.use_karras_sigmas
    assert make_scheduler("PLMS", model.scheduler_config).config.skip_prk_steps
    for name in SAMPLERS:
        scheduler = make_scheduler(name, model.scheduler_config)
        assert scheduler.config.beta_schedule == model.scheduler_config["beta_schedule"]
        assert scheduler.config.prediction_type == "epsilon"


def test_v_prediction_carries_over_and_generates(model, v_model):
    assert v_model.prediction_type == "v_prediction"
    for name in SAMPLERS:
        assert make_scheduler(name, v_model.scheduler_config).config.prediction_type == "v_prediction"
    # the model's prediction type wins over a config that says otherwise
    assert make_scheduler("Euler", model.scheduler_config, "v_prediction").config.prediction_type == "v_prediction"
    for sampler in ("Euler a", "DPM++ 2M Karras", "DDIM"):
        v_result = generate(v_model, sampler=sampler)
        assert not np.array_equal(pixels(v_result), pixels(generate(model, sampler=sampler)))


# ----------------------------------------------------------------------------------------- prompts

def test_negative_prompt_changes_the_image(model):
    plain = generate(model)
    negative = generate(model, negative_prompt="blurry, ugly")
    assert not np.array_equal(pixels(plain), pixels(negative))
    assert "\nNegative prompt: blurry, ugly\n" in negative.infotext


def test_combine_guidance_is_composable_diffusion():
    uncond, cat, dog = torch.full((1, 2), 1.0), torch.full((1, 2), 3.0), torch.full((1, 2), -1.0)
    out = combine_guidance(torch.cat([uncond, cat, dog]), torch.tensor([1.0, 0.5]), 7.0)
    expected = uncond + 7.0 * (1.0 * (cat - uncond) + 0.5 * (dog - uncond))
    assert out.shape == (1, 2) and torch.allclose(out, expected)
    # one part of weight 1 is plain classifier-free guidance
    plain = combine_guidance(torch.cat([uncond, cat]), torch.tensor([1.0]), 7.0)
    assert torch.allclose(plain, uncond + 7.0 * (cat - uncond))


def test_and_parts_and_weights(model):
    cat = generate(model, prompt="a cat")
    # a zero-weight part contributes nothing; two halves of the same part make one whole
    zero_dog = generate(model, prompt="a cat AND a dog:0")
    halves = generate(model, prompt="a cat :0.5 AND a cat :0.5")
    assert np.abs(pixels(cat) - pixels(zero_dog)).max() <= 2
    assert np.abs(pixels(cat) - pixels(halves)).max() <= 2
    dog_half = generate(model, prompt="a cat AND a dog:0.5")
    dog_full = generate(model, prompt="a cat AND a dog:1")
    assert not np.array_equal(pixels(dog_half), pixels(dog_full))
    assert not np.array_equal(pixels(cat), pixels(dog_half))
    plan = ConditioningPlan.build("a cat AND a dog:0.5", "", 3)
    assert plan.weights == [1.0, 0.5]
    assert [text.strip() for text in plan.texts_at(1)[1]] == ["a cat", "a dog"]


def test_text_at_step_picks_the_entry_in_force():
    schedule = [[5, "a cat"], [10, "a dog"]]
    assert [text_at_step(schedule, step) for step in range(1, 11)] == ["a cat"] * 5 + ["a dog"] * 5
    assert text_at_step(schedule, 11) == "a dog"  # past the end: the last text
    assert text_at_step([[3, "x"]], 1) == "x"


def test_prompt_editing_and_alternation_switch_per_step():
    plan = ConditioningPlan.build("a [cat:dog:0.5]", "[blurry::2]", 4)
    assert [plan.texts_at(step) for step in range(1, 5)] == [
        ("blurry", ["a cat"]), ("blurry", ["a cat"]), ("", ["a dog"]), ("", ["a dog"])]
    assert plan.distinct_texts() == ["blurry", "", "a cat", "a dog"]
    alternating = ConditioningPlan.build("[red|blue] ball", "", 4)
    assert [alternating.texts_at(step)[1][0] for step in range(1, 5)] == ["red ball", "blue ball"] * 2
    assert alternating.distinct_texts() == ["", "red ball", "blue ball"]


def test_prompt_editing_reaches_the_image(model):
    edited = pixels(generate(model, prompt="a [cat:dog:0.5]", steps=4))
    assert not np.array_equal(edited, pixels(generate(model, prompt="a cat", steps=4)))
    assert not np.array_equal(edited, pixels(generate(model, prompt="a dog", steps=4)))


def test_long_prompts_mix_with_short_ones(model):
    long_text = ", ".join(["a red cat on a blue mat"] * 20)  # well over 75 tokens: several chunks
    result = generate(model, prompt=f"[a dog:{long_text}:0.5] AND a bird:0.3", negative_prompt="blurry")
    assert result.image.size == (64, 64)


def test_each_distinct_text_is_encoded_once(model, monkeypatch):
    import trainer.sampling.txt2img as sampling

    calls = []
    real = sampling.PromptEncoder

    class Recording(real):
        def __call__(self, prompts):
            calls.append(list(prompts))
            return super().__call__(prompts)

    monkeypatch.setattr(sampling, "PromptEncoder", Recording)
    txt2img(model, small(prompt="[red|blue] ball", steps=4, batch_count=2))
    assert calls == [["", "red ball", "blue ball"]]


def test_embeddings_and_clip_skip_reach_the_image(model):
    base = generate(model, prompt="a photo of mystyle")
    vectors = torch.randn(2, model.text_width, generator=torch.Generator().manual_seed(0))
    embedded = txt2img(model, small(prompt="a photo of mystyle"), {"mystyle": vectors})[0]
    assert not np.array_equal(pixels(base), pixels(embedded))
    skipped = generate(model, prompt="a photo of mystyle", clip_skip=2)
    assert not np.array_equal(pixels(base), pixels(skipped))
    assert skipped.infotext.endswith(", Clip skip: 2")


# ----------------------------------------------------------------------------------------- progress and stop

def test_progress_reports_each_step_once(model):
    for sampler in ("Euler a", "Heun", "PLMS"):  # first order, second order (2n-1 UNet calls), PLMS (n+1)
        events = []
        txt2img(model, small(sampler=sampler, steps=3), progress=events.append)
        assert [e.step for e in events] == [1, 2, 3], sampler
        assert all(e.total == 3 and e.image == 1 and e.images == 1 for e in events)


def test_stop_returns_the_images_finished_so_far(model):
    events = []
    results = txt2img(model, small(batch_count=3, seed=5), progress=events.append,
                      should_stop=lambda: len(events) >= 4)  # stop during the second image
    assert [r.seed for r in results] == [5]
    assert txt2img(model, small(), should_stop=lambda: True) == []


# ----------------------------------------------------------------------------------------- infotext and files

def test_infotext_format(model):
    params = validate_params(Txt2ImgParams(prompt="a cat", negative_prompt="blurry", seed=123))
    named = dataclasses.replace(model, name="models/v1-5-pruned.safetensors", checkpoint_hash="6ce0161689")
    assert format_infotext(params, 123, named) == (
        "a cat\nNegative prompt: blurry\n"
        "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, Model hash: 6ce0161689, "
        "Model: v1-5-pruned")
    other = dataclasses.replace(params, negative_prompt="", cfg_scale=7.5, clip_skip=2, sampler="DPM++ 2M Karras")
    text = format_infotext(other, 9, dataclasses.replace(named, name="odd, name: x"))
    assert text == ('a cat\nSteps: 20, Sampler: DPM++ 2M Karras, CFG scale: 7.5, Seed: 9, Size: 512x512, '
                    'Model hash: 6ce0161689, Model: "odd, name: x", Clip skip: 2')


def test_infotext_round_trip_through_png(model, tmp_path):
    result = generate(model, prompt="a café, (red:1.2) roses", negative_prompt="bad")
    path = save_png(result.image, tmp_path / "out" / "00001-123.png", result.infotext)
    assert read_infotext(path) == result.infotext
    assert result.infotext.startswith("a café, (red:1.2) roses\nNegative prompt: bad\nSteps: 3, ")
    assert "Model hash: demo, Model: demo" in result.infotext
    assert [p.name for p in path.parent.iterdir()] == ["00001-123.png"]  # no temp file left behind
    from PIL import Image
    with Image.open(path) as image:
        assert np.array_equal(np.asarray(image.convert("RGB"), dtype=np.int16), pixels(result))
    plain = tmp_path / "plain.png"
    result.image.save(plain)
    assert read_infotext(plain) is None


# ----------------------------------------------------------------------------------------- validation

@pytest.mark.parametrize("changes, words", [
    (dict(sampler="Euler b"), ["Unknown sampler 'Euler b'", "Euler a, Euler,", "DDIM"]),
    (dict(width=100), ["Width must be a multiple of 8 between 64 and 2048, not 100."]),
    (dict(height=4096), ["Height must be a multiple of 8"]),
    (dict(height=56), ["Height must be a multiple of 8"]),
    (dict(steps=0), ["Sampling steps must be between 1 and 150, not 0."]),
    (dict(steps=151), ["Sampling steps must be between 1 and 150"]),
    (dict(steps=2.5), ["Sampling steps must be a whole number"]),
    (dict(cfg_scale="high"), ["CFG scale must be a number"]),
    (dict(seed=-2), ["Seed must be -1 (random)"]),
    (dict(batch_count=0), ["Batch count must be between 1 and 100"]),
    (dict(clip_skip=0), ["Clip skip must be between 1 and 12"]),
])
def test_bad_params_are_user_errors(model, changes, words):
    with pytest.raises(UserError) as raised:
        txt2img(model, small(**changes))
    message = str(raised.value)
    assert "\n" not in message and message.endswith(".")
    for word in words:
        assert word in message


def test_validation_accepts_slider_floats():
    params = validate_params(Txt2ImgParams(prompt="x", steps=20.0, width=512.0, seed=5.0, cfg_scale=7))
    assert (params.steps, params.width, params.seed, params.cfg_scale) == (20, 512, 5, 7.0)
    assert isinstance(params.steps, int) and isinstance(params.cfg_scale, float)
