"""Create and train embeddings through the headless commands, on the demo model and real photos."""
import csv
import json

import torch

from helpers_cli import run_cli, run_subprocess
from trainer.embeddings.library import read_embedding_file, read_image_embedding
from trainer.sampling.txt2img import read_infotext
from trainer.training.config import TrainConfig

SMALL = ["--width", 64, "--height", 64, "--preview-steps", 2, "--seed", 1, "--quiet"]


def log_folder(work, name):
    [folder] = list((work / "textual_inversion").glob(f"*/{name}"))
    return folder


def test_create_embedding_refuses_bad_names_and_clobbering(work):
    code, out, _ = run_cli(["create-embedding", "--name", "my cat!", "--init-text", "cat", "--vectors", 2], work)
    assert code == 0 and out.strip() == f"Created: {work.resolve() / 'embeddings' / 'my cat.pt'}"  # absolute
    assert read_embedding_file(work / "embeddings" / "my cat.pt").vectors.shape == (2, 64)
    code, out, err = run_cli(["create-embedding", "--name", "my cat"], work)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "exists" in err
    assert "Pass --overwrite to replace it." in err and "tick" not in err.lower()  # the CLI's own control
    code, _, _ = run_cli(["create-embedding", "--name", "my cat", "--overwrite", "--vectors", 5], work)
    assert code == 0 and read_embedding_file(work / "embeddings" / "my cat.pt").num_vectors == 5
    code, _, err = run_cli(["create-embedding", "--name", "  "], work)
    assert code == 2 and "name" in err.lower()
    code, _, err = run_cli(["create-embedding", "--name", "x", "--vectors", 76], work)
    assert code == 2 and "75" in err


def test_training_writes_the_reference_log_layout_with_true_step_numbers(work):
    run_cli(["create-embedding", "--name", "cat", "--init-text", "a cat", "--vectors", 2], work)
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 6,
                              "--save-every", 3, "--preview-every", 3, *SMALL], work)
    assert code == 0, err
    logs = log_folder(work, "cat")
    first, best = out.strip().split(" Best validation loss ")
    assert first == f"Training finished at 6 steps. Embedding saved to {work.resolve() / 'embeddings/cat.pt'}."
    best_step = read_embedding_file(logs / "embeddings" / "cat-best.pt").step
    assert best.endswith(f" at step {best_step}: {(logs / 'embeddings' / 'cat-best.pt').resolve()}.")
    for step in (3, 6):
        copy = read_embedding_file(logs / "embeddings" / f"cat-{step}.pt")
        assert copy.step == step and copy.sd_checkpoint_name == "demo"
        assert read_infotext(logs / "images" / f"cat-{step}.png").startswith("a ")  # a training caption
        in_image = read_image_embedding(logs / "image_embeddings" / f"cat-{step}.png")
        assert in_image.step == step and torch.equal(in_image.vectors, copy.vectors)
    final = read_embedding_file(work / "embeddings" / "cat.pt")
    assert final.step == 6 and torch.equal(final.vectors, copy.vectors)
    assert not torch.equal(final.vectors, read_embedding_file(logs / "embeddings" / "cat-3.pt").vectors)
    assert (work / "embeddings" / "cat.pt.optim").is_file()
    rows = list(csv.DictReader(open(logs / "textual_inversion_loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert all(float(r["loss"]) > 0 and float(r["learn_rate"]) == 0.005 for r in rows)
    assert [int(r["epoch"]) for r in rows] == [0, 0, 0, 0, 1, 1]  # 4 images, batch 1
    assert [int(r["epoch_step"]) for r in rows] == [0, 1, 2, 3, 0, 1]  # the reference's (step - 1) % epoch length
    [settings] = logs.glob("settings-*.json")
    loaded = TrainConfig.load(settings)
    assert (loaded.name, loaded.steps, loaded.save_every, loaded.width, loaded.seed) == ("cat", 6, 3, 64, 1)
    assert json.loads(settings.read_text())["model_hash"] == final.sd_checkpoint


def test_resume_continues_from_the_saved_step_with_the_optimizer_state(work):
    run_cli(["create-embedding", "--name", "cat"], work)
    run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 3, "--save-every", 0,
             "--preview-every", 0, *SMALL], work)
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 5,
                              "--save-every", 0, "--preview-every", 0, *SMALL[:-1]], work)
    assert code == 0 and "finished at 5 steps" in out
    assert "Resumed the optimizer state" in err
    rows = list(csv.DictReader(open(log_folder(work, "cat") / "textual_inversion_loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4, 5]
    # the epoch count goes on from the overall step (4 images, batch 1), not from 0 at the resume
    assert [(int(r["epoch"]), int(r["epoch_step"])) for r in rows] == [(0, 0), (0, 1), (0, 2), (0, 3), (1, 0)]
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 5, *SMALL], work)
    assert code == 2 and "already has 5 steps" in err


def test_settings_file_reruns_the_same_training(work):
    run_cli(["create-embedding", "--name", "cat"], work)
    run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 2, "--save-every", 0,
             "--preview-every", 0, "--learn-rate", "0.01", "--shuffle-tags", *SMALL], work)
    [settings] = log_folder(work, "cat").glob("settings-*.json")
    run_cli(["create-embedding", "--name", "dog"], work)
    code, out, _ = run_cli(["train-embedding", "--name", "dog", "--dataset", "data", "--settings", settings,
                            "--steps", 3], work)
    assert code == 0 and "finished at 3 steps" in out
    [again] = log_folder(work, "dog").glob("settings-*.json")
    cfg = TrainConfig.load(again)
    assert (cfg.learn_rate, cfg.shuffle_tags, cfg.width, cfg.steps) == ("0.01", True, 64, 3)


def test_schedule_that_runs_out_ends_training_and_bad_schedule_is_a_sentence(work):
    run_cli(["create-embedding", "--name", "cat"], work)
    code, out, _ = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 100,
                            "--learn-rate", "0.01:2, 0.001:4", "--save-every", 0, "--preview-every", 0, *SMALL],
                           work)
    assert code == 0 and "finished at 4 steps" in out
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 100,
                              "--learn-rate", "0.01:abc", *SMALL], work)
    assert code == 2 and out == "" and err.count("\n") == 1 and "0.005" in err


def test_every_dataset_option_trains(work):
    from PIL import Image

    Image.new("RGBA", (80, 64), (200, 10, 10, 128)).save(work / "data" / "odd size.png")
    run_cli(["create-embedding", "--name", "cat", "--vectors", 3], work)
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 3,
                              "--no-resize", "--alpha-weight", "--shuffle-tags", "--tag-dropout", 0.3,
                              "--latent-sampling", "random", "--clip-grad-mode", "norm",
                              "--clip-grad-value", "0.1:2, 0.05", "--batch-size", 2, "--grad-accum", 2,
                              "--template", "filewords.txt", "--save-every", 0, "--preview-every", 0, *SMALL],
                             work)
    assert code == 0, err
    rows = list(csv.DictReader(open(log_folder(work, "cat") / "textual_inversion_loss.csv")))
    assert len(rows) == 3


def test_missing_dataset_template_and_embedding_are_sentences(work):
    run_cli(["create-embedding", "--name", "cat"], work)
    for extra, expected in ((["--dataset", "nowhere"], "does not exist"),
                            (["--dataset", "data", "--template", "nope.txt"], "not found"),
                            (["--dataset", "data", "--preview-sampler", "Bogus"], "Unknown sampler")):
        code, out, err = run_cli(["train-embedding", "--name", "cat", *extra, "--steps", 2, *SMALL], work)
        assert code == 2 and expected in err and err.count("\n") == 1, err
    code, _, err = run_cli(["train-embedding", "--name", "ghost", "--dataset", "data", *SMALL], work)
    assert code == 2 and "not found" in err


def test_template_without_name_warns(work):
    (work / "plain.txt").write_text("a photo of [filewords]\n")
    run_cli(["create-embedding", "--name", "cat"], work)
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--template", "plain.txt",
                            "--steps", 1, "--save-every", 0, "--preview-every", 0, *SMALL], work)
    assert code == 0 and "has no [name]" in err


def test_nan_loss_stops_and_keeps_the_last_finite_vectors(work):
    run_cli(["create-embedding", "--name", "cat"], work)
    code, out, _ = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 20,
                            "--learn-rate", "1e30", "--save-every", 0, "--preview-every", 0, *SMALL], work)
    assert code == 1 and "NaN" in out and "last finite embedding" in out
    saved = read_embedding_file(work / "embeddings" / "cat.pt")
    assert torch.isfinite(saved.vectors).all() and saved.step < 20


def test_list_embeddings_reports_loaded_and_skipped(work):
    import pickle

    run_cli(["create-embedding", "--name", "good"], work)
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, work / "embeddings" / "sd1.pt")

    class Evil:
        def __reduce__(self):
            return (open, (str(work / "pwned"), "w"))

    (work / "embeddings" / "evil.pt").write_bytes(pickle.dumps(Evil()))
    code, out, _ = run_cli(["list-embeddings", "--json"], work)
    data = json.loads(out)
    assert code == 0 and list(data["loaded"]) == ["good"]
    assert data["loaded"]["good"]["vectors"] == 1 and data["loaded"]["good"]["shape"] == 64
    assert "768" in data["skipped"]["sd1"]["reason"] and "evil" in data["skipped"]
    assert not (work / "pwned").exists()


def test_two_processes_train_data_parallel(work):
    """`accelerate launch` with two CPU processes (gloo) runs the same loop; only the main process writes."""
    run_cli(["create-embedding", "--name", "dp", "--vectors", 2], work)
    result = run_subprocess(["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", 2,
                             "--num_machines", 1, "--mixed_precision", "no", "--dynamo_backend", "no",
                             "-m", "trainer", "train-embedding", "--name", "dp", "--dataset", "data",
                             "--steps", 4, "--save-every", 2, "--preview-every", 0, "--width", 64,
                             "--height", 64, "--seed", 3], work)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Training finished at 4 steps" in result.stdout
    assert "Data parallel over 2 processes; vectors identical on every process." in result.stderr
    logs = log_folder(work, "dp")
    assert sorted(p.name for p in (logs / "embeddings").iterdir()) == ["dp-2.pt", "dp-4.pt", "dp-best.pt"]
    rows = list(csv.DictReader(open(logs / "textual_inversion_loss.csv")))
    assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]


def test_an_embedding_is_trained_where_and_as_it_was_found(work):
    from trainer.embeddings.library import Embedding, save_embedding

    save_embedding(Embedding("style-sf", torch.zeros(2, 64)), work / "embeddings" / "styles" / "style-sf.safetensors")
    save_embedding(Embedding("big", torch.zeros(1, 768)), work / "embeddings" / "big.pt")
    code, out, err = run_cli(["train-embedding", "--name", "style-sf", "--dataset", "data", "--steps", 2,
                              "--save-every", 0, "--preview-every", 0, *SMALL], work)
    assert code == 0, err
    saved = read_embedding_file(work / "embeddings" / "styles" / "style-sf.safetensors")
    assert saved.step == 2 and saved.vectors.abs().sum() > 0
    assert sorted(p.name for p in (work / "embeddings").rglob("style-sf*")) == [
        "style-sf.safetensors", "style-sf.safetensors.optim"]
    code, _, err = run_cli(["train-embedding", "--name", "big", "--dataset", "data", *SMALL], work)
    assert code == 2 and "cannot be trained on this model" in err and "768" in err


def test_safetensors_on_request_stays_safetensors(work):
    code, out, _ = run_cli(["create-embedding", "--name", "sft", "--vectors", 2, "--format", "safetensors"], work)
    assert code == 0 and out.strip() == f"Created: {work.resolve() / 'embeddings/sft.safetensors'}"
    code, out, _ = run_cli(["create-embedding", "--name", "sft", "--vectors", 3, "--overwrite"], work)
    assert out.strip() == f"Created: {work.resolve() / 'embeddings/sft.safetensors'}"  # in place
    assert sorted(p.name for p in (work / "embeddings").iterdir()) == ["sft.safetensors"]
    assert read_embedding_file(work / "embeddings" / "sft.safetensors").num_vectors == 3
