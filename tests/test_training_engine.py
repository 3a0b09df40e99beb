"""The training loop's promises under stress: interrupt, an exception mid-run, the job runner's one-at-a-time."""
import re
import time
from common import events
from pathlib import Path

import pytest
import torch

from helpers_images import make_dataset
from trainer.embeddings.library import create_embedding, read_embedding_file
from common.errors import UserError
from trainer.job import JobRunner
from trainer.training.textual_inversion import train_embedding
from trainer.training.config import TrainConfig

TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"


@pytest.fixture()
def setup(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64))
    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "subject", init_text="photo", num_vectors=2,
                     embeddings_dir=tmp_path / "emb", checkpoint_hash=demo_model.checkpoint_hash,
                     checkpoint_name=demo_model.name)
    cfg = TrainConfig(name="subject", dataset=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"), width=64,
                      height=64, steps=1000, save_every=0, preview_every=0, seed=0)
    return demo_model, cfg, tmp_path


def test_interrupt_stops_before_the_next_step_and_saves(setup):
    model, cfg, tmp = setup
    steps = []

    def progress(event):
        if isinstance(event, events.Step):
            steps.append(event.step)

    result = train_embedding(model, cfg, tmp / "emb", TEMPLATES, progress=progress,
                             should_stop=lambda: len(steps) >= 3)
    assert result.status == "interrupted" and result.step == 3
    best = Path(result.log_dir) / "embeddings" / "subject-best.pt"
    assert re.fullmatch(re.escape(f"Training interrupted at 3 steps. Embedding saved to {tmp / 'emb' / 'subject.pt'}. "
                                  "Best validation loss ") + r"\d\.\d{6}" + re.escape(f" at step 0: {best}."),
                        result.message)
    assert read_embedding_file(tmp / "emb" / "subject.pt").step == 3


def test_an_exception_mid_run_saves_the_last_good_vectors_and_says_it_failed(setup):
    model, cfg, tmp = setup
    seen = {}

    def progress(event):
        if isinstance(event, events.Step):
            seen[event.step] = True
            if event.step == 4:
                raise OSError("disk full (simulated)")

    result = train_embedding(model, cfg, tmp / "emb", TEMPLATES, progress=progress)
    assert result.status == "failed" and "finished" not in result.message
    assert result.message.startswith("Training failed at step 5: OSError: disk full (simulated).")
    saved = read_embedding_file(tmp / "emb" / "subject.pt")
    assert saved.step == 4 and torch.isfinite(saved.vectors).all()
    assert not (tmp / "emb" / "subject.pt.optim").exists()  # optimizer state is only kept after clean stops


def test_only_the_vectors_train(setup):
    model, cfg, tmp = setup
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    te_before = model.text_encoder.get_input_embeddings().weight.clone()
    cfg.steps = 3
    train_embedding(model, cfg, tmp / "emb", TEMPLATES)
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())
    assert torch.equal(te_before, model.text_encoder.get_input_embeddings().weight)
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert read_embedding_file(tmp / "emb" / "subject.pt").step == 3


def test_job_runner_runs_one_job_at_a_time_and_reports():
    runner = JobRunner()

    class Done:
        status, message = "finished", "all good"

    def slow(job):
        while not job.stop.is_set():
            time.sleep(0.01)
        return type("R", (), {"status": "interrupted", "message": "stopped"})()

    job = runner.start("test", "Slow job", slow)
    with pytest.raises(UserError, match="Another job is running"):
        runner.start("test", "Second", lambda j: Done())
    assert runner.interrupt()
    runner.wait(5)
    assert (job.state, job.message) == ("interrupted", "stopped")
    second = runner.start("test", "Second", lambda j: Done())
    runner.wait(5)
    assert (second.state, second.message) == ("finished", "all good")

    def broken(job):
        raise RuntimeError("boom")

    third = runner.start("test", "Broken job", broken)
    runner.wait(5)
    assert third.state == "failed" and third.error == "Broken job failed: RuntimeError: boom"
