"""Stage 5 of the demo's pretraining (polish) starts from a finished stage-4 file: the file is taken only when it was
made with the same settings, and the saved state says how many polish steps went in."""
import argparse
import subprocess
import sys

import pytest
import torch

from test_pretrain_whitening import SCRIPT, load_script
from trainer.models.demo import build_demo_modules

DEFAULTS = dict(seed=0, scenes=12000, vae_steps=800, vae_colour=0.0, vae_colour_target="linear", vae_whiten=False,
                unet_steps=4000, code_steps=1500, code_lr=1e-3, code_share=0.6, code_spread=0.015, code_jitter=0.006,
                code_off_book_jitter=0.0, code_batch=None, decoder_steps=1200, decoder_lr=1e-3, decoder_batch=8,
                polish_steps=0, polish_lr=3e-4)


def settings(**changes):
    args = argparse.Namespace(**{**DEFAULTS, **changes})
    args.stage4_from = changes.get("stage4_from")
    return args


def test_the_saved_state_counts_polish_steps_only_when_there_are_some():
    script = load_script()
    assert script.complete_note(settings(), 4) == "complete: 800 vae + 4000 unet + 1500 code + 1200 decoder steps"
    assert script.complete_note(settings(), 5) == script.complete_note(settings(), 4)  # no polish: stage 4's file
    assert (script.complete_note(settings(polish_steps=2000), 5)
            == "complete: 800 vae + 4000 unet + 1500 code + 1200 decoder + 2000 polish steps")
    assert script.complete_note(settings(decoder_steps=0, polish_steps=10), 5) == \
        "complete: 800 vae + 4000 unet + 1500 code + 10 polish steps"


def test_stage_five_takes_a_stage_four_file_made_with_the_same_settings(tmp_path):
    script = load_script()
    log = script.Log(tmp_path / "log.txt")
    made = build_demo_modules(0)
    path = tmp_path / "stage4.safetensors"
    metadata = {"scaling_factor": 0.5, **{k: v for k, v in DEFAULTS.items() if not k.startswith("polish")}}
    script.save_weights(made, path, metadata, log, script.complete_note(settings(), 4))

    modules = build_demo_modules(1)  # other random weights, replaced by the file's
    assert script.load_saved(modules, settings(stage4_from=path, polish_steps=2000), log, 4) == 0.5
    for name in ("unet", "text_encoder", "vae"):
        theirs = made[name].state_dict()
        assert all(torch.equal(v, theirs[k].half().float()) for k, v in modules[name].state_dict().items())

    with pytest.raises(SystemExit, match="--stage4-from .* was made with other settings"):
        script.load_saved(build_demo_modules(1), settings(stage4_from=path, decoder_steps=600), log, 4)


@pytest.mark.parametrize("option", ["--vae-from", "--stage2-from", "--stage3-from", "--stage4-from"])
def test_a_missing_file_to_start_from_is_one_sentence_before_any_work(tmp_path, option):
    missing = tmp_path / "nope.safetensors"
    result = subprocess.run([sys.executable, str(SCRIPT), option, str(missing), "--work-dir", str(tmp_path / "work"),
                             "--out", str(tmp_path / "demo.safetensors")], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert f"{option} {missing}: no such file" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "work").exists() and not (tmp_path / "demo.safetensors").exists()
