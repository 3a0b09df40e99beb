"""Training hypernetworks: the headless commands, the log layout, interrupt and resume, cached conditioning."""
import csv
import json
from common import events
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch

from helpers_cli import run_cli, run_subprocess
from helpers_images import make_dataset
from common.errors import UserError
from trainer.hypernetworks.network import create_hypernetwork, read_hypernetwork
from trainer.training.hypernetwork import CachedConditioning, train_hypernetwork
from trainer.sampling.txt2img import Txt2ImgParams, read_infotext, txt2img
from trainer.training.config import TrainConfig

TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"
SMALL = ["--width", 64, "--height", 64, "--preview-steps", 2, "--seed", 1, "--quiet"]


def weights(hypernetwork):
    return {k: v.clone() for k, v in hypernetwork.state_dict().items()}


def test_cli_create_train_and_the_log_layout(work, demo_model):
    code, out, err = run_cli(["create-hypernetwork", "--name", "style", "--activation", "silu", "--layer-norm",
                              "--seed", 0], work)
    assert code == 0 and out.strip() == f"Created: {work.resolve() / 'models/hypernetworks/style.pt'}", err
    created = read_hypernetwork(work / "models/hypernetworks/style.pt")
    assert created.sizes == [64, 128] and created.activation == "silu" and created.step == 0  # the demo's widths
    code, _, err = run_cli(["create-hypernetwork", "--name", "style"], work)
    assert code == 2 and "already exists" in err and err.count("\n") == 1

    code, out, err = run_cli(["train-hypernetwork", "--name", "style", "--dataset", "data", "--steps", 4,
                              "--save-every", 2, "--preview-every", 2, *SMALL], work)
    assert code == 0, err
    [logs] = list((work / "textual_inversion").glob("*/style"))
    assert out.strip().startswith("Training finished at 4 steps. Hypernetwork saved to "
                                  f"{work.resolve() / 'models/hypernetworks/style.pt'}. Best validation loss ")
    assert out.strip().endswith(f": {(logs / 'hypernetworks' / 'style-best.pt').resolve()}.")
    for step in (2, 4):
        copy = read_hypernetwork(logs / "hypernetworks" / f"style-{step}.pt")
        assert copy.step == step and copy.sd_checkpoint_name == "demo"
        assert read_infotext(logs / "images" / f"style-{step}.png").split("\n")[0].endswith("<hypernet:style:1>")
    assert not (logs / "image_embeddings").exists()
    trained = read_hypernetwork(work / "models/hypernetworks/style.pt")
    assert trained.step == 4 and trained.sd_checkpoint == demo_model.checkpoint_hash
    assert any(not torch.equal(a, b) for a, b in zip(weights(created).values(), weights(trained).values()))
    assert (work / "models/hypernetworks/style.pt.optim").is_file()
    rows = list(csv.DictReader(open(logs / "hypernetwork_loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
    assert all(float(r["learn_rate"]) == 0.00001 for r in rows)  # the reference's default for hypernetworks
    [settings] = logs.glob("settings-*.json")
    saved = json.loads(settings.read_text())
    assert saved["kind"] == "hypernetwork" and saved["learn_rate"] == "0.00001"
    assert saved["hypernetwork"]["activation_func"] == "silu"
    assert TrainConfig.load(settings).name == "style"


def test_training_changes_the_image(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_hypernetwork("look", [64, 128], hypernetwork_dir=tmp_path / "hn", seed=0)
    params = Txt2ImgParams("a photo <hypernet:look:1>", steps=3, seed=5, width=64, height=64)
    before = txt2img(demo_model, params, hypernetworks=tmp_path / "hn")[0].image
    cfg = TrainConfig(name="look", dataset=str(tmp_path / "data"), log_dir="", learn_rate="0.01", width=64,
                      height=64, steps=3, save_every=0, preview_every=0, seed=0)
    unet_before = {k: v.clone() for k, v in demo_model.unet.state_dict().items()}
    result = train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES)
    assert result.status == "finished" and result.step == 3
    after = txt2img(demo_model, params, hypernetworks=tmp_path / "hn")[0].image
    assert after.tobytes() != before.tobytes()
    assert all(torch.equal(unet_before[k], v) for k, v in demo_model.unet.state_dict().items())  # UNet frozen
    assert not any(p.requires_grad for p in demo_model.unet.parameters())


def test_interrupt_then_resume_with_the_optimizer_state(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_hypernetwork("hn", [64, 128], hypernetwork_dir=tmp_path / "hn", use_dropout=True,
                        dropout_structure="0, 0.1, 0", seed=0)
    cfg = TrainConfig(name="hn", dataset=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"),
                      learn_rate="0.001", width=64, height=64, steps=1000, save_every=0, preview_every=0, seed=0)
    steps, messages = [], []

    def progress(event):
        if isinstance(event, events.Step):
            steps.append(event.step)
        if isinstance(event, events.Message):
            messages.append(event.text)

    result = train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES, progress=progress,
                                should_stop=lambda: len(steps) >= 3)
    path = tmp_path / "hn" / "hn.pt"
    assert result.status == "interrupted" and result.step == 3
    assert result.message.startswith(f"Training interrupted at 3 steps. Hypernetwork saved to {path}. Best ")
    assert read_hypernetwork(path).step == 3 and (tmp_path / "hn" / "hn.pt.optim").is_file()

    cfg.steps = 5
    result = train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES, progress=progress)
    assert result.status == "finished" and result.step == 5 and steps == [1, 2, 3, 4, 5]
    assert "Resumed the optimizer state saved beside the hypernetwork." in messages
    [logs] = list((tmp_path / "logs").glob("*/hn"))
    rows = list(csv.DictReader(open(logs / "hypernetwork_loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    with pytest.raises(UserError, match="already has 5 steps"):
        train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES)


def test_a_hypernetwork_for_another_model_is_refused(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_hypernetwork("sd1", [768, 320], hypernetwork_dir=tmp_path / "hn")
    cfg = TrainConfig(name="sd1", dataset=str(tmp_path / "data"), width=64, height=64, steps=2)
    with pytest.raises(UserError, match=r"widths \[768, 320\].*\[64, 128\]"):
        train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES)
    cfg.name = "ghost"
    with pytest.raises(UserError, match="not found"):
        train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES)


def test_nan_loss_keeps_the_last_finite_weights(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_hypernetwork("wild", [64, 128], hypernetwork_dir=tmp_path / "hn", seed=0)
    cfg = TrainConfig(name="wild", dataset=str(tmp_path / "data"), log_dir="", learn_rate="1e30", width=64,
                      height=64, steps=20, save_every=0, preview_every=0, seed=0)
    result = train_hypernetwork(demo_model, cfg, tmp_path / "hn", TEMPLATES)
    assert result.status == "nan" and "last finite hypernetwork" in result.message
    saved = read_hypernetwork(tmp_path / "hn" / "wild.pt")  # reading checks every weight is finite
    assert saved.step == result.step < 20


def test_conditioning_is_encoded_once_per_distinct_prompt():
    calls = []

    def encoder(prompts):
        calls.append(list(prompts))
        return torch.stack([torch.full((77, 4), float(len(p))) for p in prompts])

    cached = CachedConditioning(encoder, "cpu", nullcontext, cache=True)
    first = cached(["a cat", "a dog!"])
    second = cached(["a dog!", "a cat"])
    assert calls == [["a cat"], ["a dog!"]]
    assert torch.equal(first, encoder(["a cat", "a dog!"])) and torch.equal(second[0], first[1])
    calls.clear()
    fresh = CachedConditioning(encoder, "cpu", nullcontext, cache=False)  # shuffled/dropped tags: always encode
    fresh(["a cat"])
    fresh(["a cat"])
    assert calls == [["a cat"], ["a cat"]]


def test_two_processes_train_data_parallel(work):
    """`accelerate launch` with two CPU processes: gradients are averaged, every process ends identical."""
    assert run_cli(["create-hypernetwork", "--name", "dp", "--seed", 0], work)[0] == 0
    result = run_subprocess(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", 2,
                             "--num_machines", 1, "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "trainer", "train-hypernetwork", "--name", "dp", "--dataset", "data",
                             "--steps", 3, "--save-every", 0, "--preview-every", 0, "--learn-rate", "0.001",
                             "--width", 64, "--height", 64, "--seed", 3], work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Training finished at 3 steps" in result.stdout
    assert "Data parallel over 2 processes; weights identical on every process." in result.stderr
    assert read_hypernetwork(work / "models/hypernetworks/dp.pt").step == 3
