"""What the Train tab's output column draws from a job: a chart the browser can type, thinned for long runs; the
earlier sessions' loss on resume; epochs from the overall step; one message per outcome; each interface's hint."""
import csv

import pandas as pd
import pytest

from helpers_images import make_dataset
from common import events
from common.errors import UserError, with_hint
from trainer.job import Job
from trainer.training.loss_history import epoch_of, read_loss_history
from trainer.training.config import PreviewSettings, TrainConfig
from trainer.workspace import Folders, Workspace
from webui import job_view
from webui.hints import HYPERNETWORK_HINTS, PAGE_HINTS, job_error


def snapshot(**changes):
    job = Job(1, "train-embedding", "Training embedding cat")
    for key, value in changes.items():
        setattr(job, key, value)
    return job.snapshot()


def step_event(step, max_steps, loss=0.1, lr=0.005, epoch=0, epoch_step=0, epoch_len=1, it_per_s=0.0):
    return events.Step(step, max_steps, loss, lr, epoch, epoch_step, epoch_len, "a prompt", it_per_s)


def test_chart_frame_is_typed_and_absent_without_points():
    assert job_view.chart_frame(job_view.chart_series(snapshot())) is None  # never an empty, number-typed frame
    frame = job_view.loss_frame([(1, 0.5), (2, 0.25), (3, 0.75)])
    assert str(frame["step"].dtype) == "int64" and str(frame["loss"].dtype) == "float64"
    assert isinstance(frame["series"].dtype, pd.CategoricalDtype)  # a colour series, even with one point
    assert list(frame[frame["series"] == "raw"]["loss"]) == [0.5, 0.25, 0.75]
    smoothed = list(frame[frame["series"] == "smoothed"]["loss"])
    assert smoothed[0] == pytest.approx(0.5) and smoothed[1] == pytest.approx(0.9 * 0.5 + 0.1 * 0.25)


def test_a_long_run_is_thinned_to_a_bounded_frame_that_ends_at_the_newest_step():
    losses = [(step, 1.0 + (step % 10) / 10) for step in range(1, 100_001)]
    series = job_view.chart_series({"losses": losses})
    assert all(len(points) <= job_view.MAX_CHART_POINTS for points in series.values())
    assert series["raw"][-1][0] == 100_000 and series["smoothed"][-1][0] == 100_000
    assert all(isinstance(step, int) for step, _ in series["raw"])  # whole steps on the x axis
    assert sum(v for _, v in series["raw"]) / len(series["raw"]) == pytest.approx(1.45, abs=0.01)  # bucket means
    assert job_view.chart_interval(len(losses)) > job_view.chart_interval(10)  # redrawn less often


def test_a_series_added_to_the_chart_gets_its_own_category():
    frame = job_view.chart_frame({"raw": [(1, 1.0)], "validation": [(1, 2.0)]})
    assert set(frame["series"].cat.categories) >= {"raw", "smoothed", "validation"}


def test_resume_starts_the_loss_with_the_earlier_sessions(tmp_path):
    for day, rows in (("2026-01-01", [(1, 0.9), (2, 0.8), (3, 0.7)]), ("2026-01-02", [(3, 0.6), (4, 0.5), (9, 0.1)])):
        folder = tmp_path / day / "cat"
        folder.mkdir(parents=True)
        with open(folder / "textual_inversion_loss.csv", "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["step", "epoch", "epoch_step", "loss", "learn_rate"])
            writer.writerows([(s, 0, 0, loss, 0.005) for s, loss in rows])
            f.write("10,0,0,")  # a torn last line
    history = read_loss_history(tmp_path, "cat", "textual_inversion_loss.csv", 4)
    assert history == [(1, 0.9), (2, 0.8), (3, 0.6), (4, 0.5)]  # the later write of step 3 wins; none past 4
    job = Job(1, "train-embedding", "t")
    job.report(events.Started(4, 8, dataset_size=4, epoch_len=4, history=tuple(history)))
    assert "Step 4/8" in job_view.progress_html(job.snapshot())  # before the first step of this session
    job.report(step_event(5, 8, loss=0.4, lr=0.005))
    assert [step for step, _ in job.snapshot()["losses"]] == [1, 2, 3, 4, 5]


def test_epochs_count_from_the_overall_step():
    assert [epoch_of(step, 4) for step in (1, 4, 5, 9)] == [(0, 0), (0, 3), (1, 0), (2, 0)]
    text = job_view.progress_html(snapshot(step=step_event(5, 40, epoch=1, epoch_step=0, epoch_len=4),
                                           max_steps=40))
    assert "Step 5/40" in text and "Epoch 1, step 1/4" in text


def test_one_outcome_one_message():
    failed = snapshot(state="failed", message="Dataset directory x does not exist.",
                      error="Dataset directory x does not exist.")
    assert job_view.result_text(failed) == "" and job_error(failed) == "Dataset directory x does not exist."
    assert "does not exist" not in job_view.compact_status(failed, "train")  # the sentence appears once
    finished = snapshot(state="finished", message="Training finished at 8 steps.",
                        warnings=["Skipped broken.png: cannot be read as an image."])
    assert job_view.result_text(finished) == ("Training finished at 8 steps.\n"
                                              "Skipped broken.png: cannot be read as an image.")
    assert job_error(finished) == ""
    running = snapshot(step=step_event(3, 10, loss=0.25, lr=0.1, it_per_s=1.0), max_steps=10)
    assert "Step 3/10 · loss 0.2500 · ETA 00:07" in job_view.compact_status(running, "train")
    assert job_view.compact_status(running, "preprocess") == ""  # each subtab shows its own job


def test_each_interface_names_its_own_control():
    refused = UserError("An embedding named 'cat' already exists (embeddings/cat.pt).", control="overwrite")
    assert with_hint(refused, PAGE_HINTS).endswith("Tick 'Overwrite Old Embedding' to replace it.")
    assert "Overwrite Old Hypernetwork" in with_hint(refused, HYPERNETWORK_HINTS)
    from trainer.__main__ import CLI_HINTS

    assert with_hint(refused, CLI_HINTS).endswith("Pass --overwrite to replace it.")
    assert with_hint(UserError("Plain."), PAGE_HINTS) == "Plain."


def test_settings_json_records_previews_from_txt2img():
    cfg = TrainConfig("cat", "data", preview=PreviewSettings("a cat", "blurry", "Euler", 5, 6.5, 3, 64, 96))
    data = cfg.to_json()
    assert data["preview_from_txt2img"] is True and TrainConfig.from_json(data).preview == cfg.preview
    assert TrainConfig("cat", "data").to_json()["preview_from_txt2img"] is False
    reference = {"embedding_name": "cat", "data_root": "d", "preview_from_txt2img": True, "preview_prompt": "x",
                 "preview_steps": 9, "preview_sampler_name": "DDIM"}
    assert TrainConfig.from_json(reference).preview == PreviewSettings("x", sampler="DDIM", steps=9)


def test_training_from_the_page_resolves_paths_keeps_its_settings_and_resumes_with_history(tmp_path, demo_model):
    make_dataset(tmp_path / "photos", size=(64, 64))
    (tmp_path / "photos" / "broken.png").write_bytes(b"not an image")
    ws = Workspace(Folders.under(tmp_path), "cpu", model=demo_model)
    from trainer.embeddings.library import create_embedding

    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "cat", embeddings_dir=ws.folders.embeddings_dir)
    common = dict(template="style_filewords.txt", width=64, height=64, save_every=0, preview_every=0, seed=1)
    job = ws.start_training(TrainConfig("cat", "photos", steps=3, **common))
    assert job.settings.dataset == str(tmp_path.resolve() / "photos")  # relative to the data folder
    ws.runner.wait(120)
    snap = job.snapshot()
    assert snap["state"] == "finished" and snap["warnings"] == ["Skipped broken.png: cannot be read as an image "
                                                                "(UnidentifiedImageError)."]
    job = ws.start_training(TrainConfig("cat", "photos", steps=5, **common))
    ws.runner.wait(120)
    snap = job.snapshot()
    assert [step for step, _ in snap["losses"]] == [1, 2, 3, 4, 5]  # the chart shows the first session too
    first_checks = read_loss_history(tmp_path / "textual_inversion", "cat", "validation.csv", 3, column="val_loss")
    assert [step for step, _ in first_checks] == [0, 3]  # before the first step and at the end
    assert snap["validations"][0] == first_checks[0]  # and its validation line: its check at 0, then this run's
    assert [step for step, _ in snap["validations"]] == [0, 3, 5]
    assert (snap["step"].epoch, snap["step"].epoch_step, snap["step"].epoch_len) == (1, 0, 4)


def test_previews_are_encoded_once_and_only_the_newest_are_kept(tmp_path):
    from PIL import Image

    from trainer.job import MAX_PREVIEWS

    files = job_view.PreviewFiles()
    job = Job(7, "train-embedding", "t")
    for step in range(5, 5 * (MAX_PREVIEWS + 3), 5):
        job.report(events.Preview(step, Image.new("RGB", (64, 48), (step, 0, 0)), "p", 1))
        items = files.items(job.snapshot())
    assert [caption for _, caption in items][:2] == [f"step {5 * (MAX_PREVIEWS + 2)}", f"step {5 * (MAX_PREVIEWS + 1)}"]
    assert len(items) == MAX_PREVIEWS == len(list(files.folder.iterdir()))  # older files are deleted
    first = items[0][0]
    assert files.items(job.snapshot())[0][0] == first  # not written again
    assert Image.open(first).size == (64, 48) and Image.open(first).getpixel((0, 0))[0] == 5 * (MAX_PREVIEWS + 2)
