"""The validation loss: deterministic (seed-independent, equal across a resume), cheap (a few forward passes
without gradients), written to validation.csv, the best step kept as <name>-best.pt, early stop, vector health,
held-out images, hypernetworks, and what the page draws of it. All on the demo model with 64 px photos."""
import csv
from common import events
from pathlib import Path

import pytest
import torch

from helpers_cli import run_cli
from helpers_images import make_dataset
from trainer.embeddings.library import Embedding, create_embedding, read_embedding_file, save_embedding
from trainer.hypernetworks.network import read_hypernetwork
from trainer.job import Job
from trainer.training.textual_inversion import train_embedding
from trainer.training.config import TrainConfig
from trainer.training.validation import FixedSet, Validation
from webui import job_view

SMALL = ["--width", 64, "--height", 64, "--save-every", 0, "--preview-every", 0, "--quiet"]
TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"


def rows_of(path: Path) -> list:
    with open(path, newline="") as file:
        return list(csv.DictReader(file))


def log_folder(work: Path, name: str, log_dir: str = "textual_inversion") -> Path:
    [folder] = list((work / log_dir).glob(f"*/{name}"))
    return folder


def test_the_first_value_depends_on_the_vectors_and_data_not_on_the_training_seed(work):
    for seed, log_dir in ((1, "logs1"), (2, "logs2")):  # same embedding, two seeds ("once" latents differ)
        run_cli(["create-embedding", "--name", "cat", "--init-text", "a cat", "--vectors", 2, "--overwrite"], work)
        code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 2,
                                  "--validate-every", 1, "--seed", seed, "--log-dir", log_dir, *SMALL], work)
        assert code == 0, err
        assert "Warning" not in err  # init words' vectors are as long as real tokens
    first, second = (rows_of(log_folder(work, "cat", d) / "validation.csv") for d in ("logs1", "logs2"))
    assert [int(r["step"]) for r in first] == [0, 1, 2]
    assert first[0]["val_loss"] == second[0]["val_loss"] and first[0]["set"] == second[0]["set"]
    assert first[1]["val_loss"] != second[1]["val_loss"]  # the steps themselves did depend on the seed


def test_resume_repeats_the_logged_value_and_the_best_copy_holds_the_best_step(work):
    run_cli(["create-embedding", "--name", "cat", "--init-text", "a cat", "--vectors", 2], work)
    created = read_embedding_file(work / "embeddings" / "cat.pt").vectors
    flags = ["--validate-every", 2, "--learn-rate", "0.05", "--seed", 5, "--width", 64, "--height", 64,
             "--save-every", 2, "--preview-every", 0, "--quiet"]
    assert run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 4, *flags], work)[0] == 0
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 6, *flags], work)
    assert code == 0, err
    logs = log_folder(work, "cat")
    rows = rows_of(logs / "validation.csv")
    assert [int(r["step"]) for r in rows] == [0, 2, 4, 4, 6]
    assert rows[3]["val_loss"] == rows[2]["val_loss"]  # the resumed run starts where the first one ended
    best_row = min(rows, key=lambda r: float(r["val_loss"]))
    best = read_embedding_file(logs / "embeddings" / "cat-best.pt")
    assert best.step == int(best_row["step"]) == int(rows[-1]["best_step"])
    assert float(rows[-1]["best_val_loss"]) == float(best_row["val_loss"])
    expected = created if best.step == 0 else read_embedding_file(logs / "embeddings" / f"cat-{best.step}.pt").vectors
    assert torch.equal(best.vectors, expected)
    assert out.strip().endswith(f"Best validation loss {float(best_row['val_loss']):.6f} at step {best.step}: "
                                f"{(logs / 'embeddings' / 'cat-best.pt').resolve()}.")
    with open(logs / "textual_inversion_loss.csv") as file:  # the reference's loss CSV is untouched
        assert file.readline().strip() == "step,epoch,epoch_step,loss,learn_rate"
    assert float(rows[0]["init_norm_mean"]) == float(rows[-1]["init_norm_mean"])  # init words remembered


def test_early_stop_ends_training_saves_and_says_why(work):
    run_cli(["create-embedding", "--name", "cat", "--vectors", 2], work)
    # A learning rate of 0 never changes the vectors: validation cannot improve.
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 100,
                              "--learn-rate", "0", "--validate-every", 2, "--early-stop", 2, *SMALL], work)
    assert code == 0, err
    logs = log_folder(work, "cat")
    rows = rows_of(logs / "validation.csv")
    assert [int(r["step"]) for r in rows] == [0, 2, 4] and len({r["val_loss"] for r in rows}) == 1
    value = float(rows[0]["val_loss"])
    assert out.strip() == (
        f"Training stopped early at 4 steps: validation loss has not improved for 2 checks (best {value:.6f} at "
        f"step 0). Embedding saved to {(work / 'embeddings/cat.pt').resolve()}. Best validation loss {value:.6f} at step 0: "
        f"{(logs / 'embeddings' / 'cat-best.pt').resolve()}.")
    assert read_embedding_file(work / "embeddings" / "cat.pt").step == 4
    assert (work / "embeddings" / "cat.pt.optim").is_file()  # saved as an interrupt saves
    assert read_embedding_file(logs / "embeddings" / "cat-best.pt").step == 0
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 8,
                            "--validate-every", 0, "--early-stop", 2, *SMALL], work)
    assert code == 2 and err.count("\n") == 1 and "Early stop needs validation" in err


def test_the_tracker_keeps_the_lowest_loss_and_counts_checks_without_improvement(tmp_path):
    losses = iter([3.0, 2.0, 2.5, 1.0, 1.5, 1.2, 1.0])
    saved, reported = [], []

    def save_best(vectors, step, path):
        saved.append(step)
        return save_embedding(Embedding("x", vectors, step), path)

    fixed = FixedSet([torch.zeros(4, 8, 8)], [torch.zeros(4, 8, 8)], [500], ["x"], [None], "abc")
    validation = Validation(fixed, every=10, patience=3, loss=lambda: next(losses),
                            describe=lambda vectors: ({"norm_max": float(vectors.norm())}, None),
                            save_best=save_best, best_file=tmp_path / "x-best.pt", csv_path=tmp_path / "v.csv",
                            emit=reported.append, start_step=0)
    for step in range(0, 70, 10):
        assert validation.due(step) and not validation.stop_reason
        validation.check(step, torch.full((1, 4), float(step)))
    assert saved == [0, 10, 30] and read_embedding_file(tmp_path / "x-best.pt").step == 30
    assert read_embedding_file(tmp_path / "x-best.pt").vectors[0, 0] == 30.0
    assert validation.stop_reason == "validation loss has not improved for 3 checks (best 1.000000 at step 30)"
    assert [r["best_step"] for r in rows_of(tmp_path / "v.csv")] == ["0", "10", "10", "30", "30", "30", "30"]
    assert [e.improved for e in reported] == [True, True, False, True, False, False, False]
    assert not validation.due(60) and validation.due(70)


def test_vectors_far_longer_than_real_tokens_are_warned_about(work, demo_model):
    token_norm = demo_model.text_encoder.get_input_embeddings().weight.norm(dim=1).median()
    directions = torch.randn(3, demo_model.text_width, generator=torch.Generator().manual_seed(0))
    loud = directions / directions.norm(dim=1, keepdim=True) * token_norm * torch.tensor([[8.0], [10.0], [9.0]])
    save_embedding(Embedding("loud", loud), work / "embeddings" / "loud.pt")
    code, _, err = run_cli(["train-embedding", "--name", "loud", "--dataset", "data", "--steps", 3,
                            "--validate-every", 1, "--seed", 1, *SMALL], work)  # --quiet: only the result
    assert code == 0
    assert err.count("Warning: vector norms grew to") == 1  # once, not at every check
    row = rows_of(log_folder(work, "loud") / "validation.csv")[0]
    norms = [float(n) for n in row["norms"].split()]
    assert len(norms) == 3 and float(row["norm_max"]) == pytest.approx(max(norms), abs=1e-4)
    assert max(norms) > 5 * float(row["token_norm"])
    assert float(row["max_vs_token"]) > 5
    code, _, err = run_cli(["train-embedding", "--name", "loud", "--dataset", "data", "--steps", 4,
                            "--validate-every", 1, "--seed", 1, *SMALL[:-1]], work)
    assert err.count("Warning: vector norms grew to") == 2  # as it happens (an event, as the page gets it), at the end


def test_held_out_images_are_not_trained_on(work):
    run_cli(["create-embedding", "--name", "cat", "--vectors", 2], work)
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 4,
                            "--validation-split", "0.25", "--seed", 1, *SMALL[:-1]], work)
    assert code == 0 and "Validation: 1 of 4 images held out, 3 left to train on." in err
    logs = log_folder(work, "cat")
    assert [int(r["epoch"]) for r in rows_of(logs / "textual_inversion_loss.csv")] == [0, 0, 0, 1]
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 5,
                            "--validation-split", "0.9", *SMALL], work)
    assert code == 2 and "leaves none to train on" in err


def test_a_check_is_a_few_forward_passes_without_gradients(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "subject", init_text="photo", num_vectors=2,
                     embeddings_dir=tmp_path / "emb", checkpoint_hash=demo_model.checkpoint_hash,
                     checkpoint_name=demo_model.name)
    cfg = TrainConfig(name="subject", dataset=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"), width=64,
                      height=64, steps=6, save_every=0, preview_every=0, seed=0, validate_every=3)
    calls = []
    hook = demo_model.unet.register_forward_pre_hook(
        lambda module, args: calls.append((args[0].shape[0], torch.is_grad_enabled())))
    try:
        result = train_embedding(demo_model, cfg, tmp_path / "emb", TEMPLATES)
    finally:
        hook.remove()
    assert result.status == "finished"
    training = [batch for batch, grad in calls if grad]
    checking = [batch for batch, grad in calls if not grad]
    assert training == [1] * 6
    assert checking == [4, 4] * 3  # checks at steps 0, 3 and 6: 8 items, two UNet calls each, no backward


def test_hypernetworks_get_validation_and_a_best_copy(work):
    run_cli(["create-hypernetwork", "--name", "style", "--seed", 0], work)
    code, out, err = run_cli(["train-hypernetwork", "--name", "style", "--dataset", "data", "--steps", 2,
                              "--validate-every", 1, "--save-every", 0, "--preview-every", 0, "--width", 64,
                              "--height", 64, "--seed", 3, "--quiet"], work)
    assert code == 0, err
    logs = log_folder(work, "style")
    rows = rows_of(logs / "validation.csv")
    assert [int(r["step"]) for r in rows] == [0, 1, 2] and all(float(r["weight_norm"]) > 0 for r in rows)
    best = read_hypernetwork(logs / "hypernetworks" / "style-best.pt")
    assert best.step == int(rows[-1]["best_step"])
    assert f"at step {best.step}: {(logs / 'hypernetworks' / 'style-best.pt').resolve()}." in out
    run_cli(["create-hypernetwork", "--name", "style", "--seed", 0, "--overwrite"], work)
    run_cli(["train-hypernetwork", "--name", "style", "--dataset", "data", "--steps", 1, "--log-dir", "other",
             "--seed", 4, *SMALL], work)
    assert rows_of(log_folder(work, "style", "other") / "validation.csv")[0]["val_loss"] == rows[0]["val_loss"]


def test_the_page_draws_the_validation_curve_and_the_vector_norms():
    job = Job(1, "train-embedding", "Training embedding cat")
    for step in (1, 2):
        job.report(events.Step(step, 4, 0.5, 0.005, 0, step - 1, 4, "a prompt", 1.0))
    job.report(events.Validated(2, 0.25, best_step=0, best_val_loss=0.2, improved=False, seconds=0.1, health={
        "norm_mean": 0.3, "norm_max": 0.35, "norms": "0.2500 0.3500", "init_norm_mean": 0.1, "init_step": 0,
        "token_norm": 0.1, "max_vs_token": 3.5}))
    snap = job.snapshot()
    frame = job_view.loss_frame(snap["losses"], validations=snap["validations"])
    assert sorted(set(frame["series"])) == ["raw", "smoothed", "validation"]
    assert frame[frame["series"] == "validation"][["step", "loss"]].values.tolist() == [[2, 0.25]]
    page = job_view.progress_html(snap)
    assert "Validation loss: 0.250000 at step 2 &middot; best 0.200000 at step 0" in page
    assert "Vector norms: 0.2500 0.3500" in page and "3.50&times; a typical token" in page
    assert "init words 0.1000" in page


def test_the_train_tab_has_the_validation_settings_and_they_reach_the_config(tmp_path, demo_model):
    import gradio as gr

    from trainer.workspace import Folders, Workspace
    from webui import train_tab

    ws = Workspace(Folders(embeddings_dir=tmp_path / "emb", hypernetwork_dir=tmp_path / "hn",
                           templates_dir=TEMPLATES), "cpu", model=demo_model)
    with gr.Blocks():
        form = train_tab.build(ws).form
    components = dict(form)
    assert components["validate_every"].label == "Validate every N steps"
    assert components["early_stop"].label == "Stop when validation has not improved for K checks"
    values = {key: component.value for key, component in form}
    cfg = train_tab.config_from_form({**values, "name": "cat", "dataset": "data"}, None)
    assert (cfg.validate_every, cfg.early_stop, cfg.validation_split) == (100, 0, 0.0)
    cfg = train_tab.config_from_form({**values, "name": "cat", "dataset": "data", "validate_every": 50.0,
                                      "early_stop": 3.0, "validation_split": 0.1}, None)
    assert (cfg.validate_every, cfg.early_stop, cfg.validation_split) == (50, 3, 0.1)
    loaded = TrainConfig.from_json(cfg.to_json())  # what the settings JSON carries, and Load settings puts back
    assert train_tab.form_from_config(loaded, form) == train_tab.form_from_config(cfg, form)
