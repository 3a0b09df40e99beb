"""Training an SDXL embedding from the headless commands on the tiny SDXL model: every Train-tab option, previews,
copies, resume with the optimizer state, the NaN watchdog, interrupt; txt2img with the result; hypernetwork
training refused."""
import csv

import torch
from common import events
from PIL import Image
from safetensors.torch import load_file

from helpers_cli import run_cli
from helpers_sdxl import sdxl_files, sdxl_model  # noqa: F401 - fixtures
from trainer.embeddings.library import read_embedding_file, read_image_embedding
from common.errors import UserError
from trainer.sampling.txt2img import read_infotext
from trainer.models.sdxl import HYPERNETWORK_REFUSAL
from trainer.training.textual_inversion import train_embedding
from trainer.training.config import TrainConfig
from trainer.workspace import Folders, Workspace

SMALL = ["--width", 64, "--height", 64, "--preview-steps", 2, "--seed", 1]


def model_args(sdxl_files):
    return ["--model", "xl", "--ckpt-dir", sdxl_files["ckpt_dir"]]


def test_cli_trains_both_encoders_with_every_option_then_resumes(work, sdxl_files):
    xl = model_args(sdxl_files)
    Image.new("RGBA", (80, 64), (200, 10, 10, 128)).save(work / "data" / "odd size.png")  # a second bucket
    code, out, err = run_cli(["create-embedding", "--name", "cat", "--init-text", "a cat", "--vectors", 2, *xl], work)
    assert code == 0 and out.strip() == f"Created: {(work / 'embeddings/cat.safetensors').resolve()}", err
    start = read_embedding_file(work / "embeddings" / "cat.safetensors")

    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 4,
                              "--save-every", 2, "--preview-every", 2, "--learn-rate", "0.05:2, 0.02",
                              "--batch-size", 2, "--grad-accum", 2, "--clip-grad-mode", "norm",
                              "--clip-grad-value", "1", "--shuffle-tags", "--tag-dropout", 0.2,
                              "--latent-sampling", "random", "--no-resize", "--alpha-weight",
                              "--template", "style_filewords.txt", *SMALL, *xl], work)
    assert code == 0, err
    assert out.strip().startswith(
        f"Training finished at 4 steps. Embedding saved to {(work / 'embeddings/cat.safetensors').resolve()}. "
        "Best validation loss ")
    tensors = load_file(str(work / "embeddings" / "cat.safetensors"))
    assert sorted(tensors) == ["clip_g", "clip_l"] and tensors["clip_l"].shape == (2, 32) and tensors["clip_g"].shape == (2, 48)
    final = read_embedding_file(work / "embeddings" / "cat.safetensors")
    assert final.step == 4 and final.sd_checkpoint_name == "xl"
    assert not torch.allclose(final.vectors[:, :32], start.vectors[:, :32])  # both encoders' vectors learned
    assert not torch.allclose(final.vectors[:, 32:], start.vectors[:, 32:])
    [logs] = list((work / "textual_inversion").glob("*/cat"))
    for step in (2, 4):
        copy = read_embedding_file(logs / "embeddings" / f"cat-{step}.safetensors")
        assert copy.is_sdxl and copy.step == step
        preview = logs / "images" / f"cat-{step}.png"
        assert Image.open(preview).size == (64, 64) and "Model: xl" in read_infotext(preview)
        in_image = read_image_embedding(logs / "image_embeddings" / f"cat-{step}.png")
        assert in_image.is_sdxl and torch.allclose(in_image.vectors, copy.vectors)
    assert torch.equal(copy.vectors, final.vectors)
    rows = list(csv.DictReader(open(logs / "textual_inversion_loss.csv")))
    assert [float(r["learn_rate"]) for r in rows] == [0.05, 0.05, 0.02, 0.02]
    assert all(float(r["loss"]) > 0 for r in rows)
    assert (work / "embeddings" / "cat.safetensors.optim").is_file()

    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 6,
                              "--save-every", 0, "--preview-every", 0, *SMALL, *xl], work)
    assert code == 0 and "finished at 6 steps" in out and "Resumed the optimizer state" in err

    code, out, err = run_cli(["list-embeddings", *xl], work)
    assert code == 0 and "for xl (SDXL, clip_l 32 + clip_g 48)" in out and "cat: 2 vectors, step 6" in out
    code, out, err = run_cli(["txt2img", "--prompt", "a photo of cat", "--steps", 2, "--width", 64, "--height", 64,
                              "--seed", 3, "--out", "out.png", *xl], work)
    assert code == 0 and Image.open(work / "out.png").size == (64, 64), err


def test_nan_watchdog_keeps_the_last_finite_sdxl_vectors(work, sdxl_files):
    xl = model_args(sdxl_files)
    run_cli(["create-embedding", "--name", "cat", *xl], work)
    code, out, _ = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 20,
                            "--learn-rate", "1e30", "--save-every", 0, "--preview-every", 0, *SMALL, *xl], work)
    assert code == 1 and "NaN" in out and "last finite embedding" in out
    saved = read_embedding_file(work / "embeddings" / "cat.safetensors")
    assert saved.is_sdxl and torch.isfinite(saved.vectors).all() and saved.step < 20


def test_interrupt_saves_the_sdxl_embedding(work, sdxl_model):
    from trainer.embeddings.library import create_embedding

    create_embedding(sdxl_model.tokenizer, sdxl_model.text_encoder, "subject", embeddings_dir=work / "emb",
                     text_encoder_2=sdxl_model.text_encoder_2)
    cfg = TrainConfig(name="subject", dataset=str(work / "data"), log_dir=None, width=64, height=64, steps=100,
                      save_every=0, preview_every=0, seed=0)
    steps = []
    result = train_embedding(sdxl_model, cfg, work / "emb", work / "textual_inversion_templates",
                             progress=lambda e: steps.append(e.step) if isinstance(e, events.Step) else None,
                             should_stop=lambda: len(steps) >= 2)
    assert result.status == "interrupted" and result.step == 2
    assert read_embedding_file(work / "emb" / "subject.safetensors").step == 2


def test_hypernetwork_training_is_refused_on_sdxl(work, sdxl_files, sdxl_model):
    code, out, err = run_cli(["train-hypernetwork", "--name", "any", "--dataset", "data", "--steps", 2, *SMALL,
                              *model_args(sdxl_files)], work)
    assert code == 2 and out == "" and err.strip().splitlines()[-1] == f"error: {HYPERNETWORK_REFUSAL}"
    ws = Workspace(Folders(hypernetwork_dir=work / "hn"), model=sdxl_model)
    try:
        ws.start_hypernetwork_training(TrainConfig(name="any", dataset=str(work / "data")))
    except UserError as error:
        assert str(error) == HYPERNETWORK_REFUSAL
    else:
        raise AssertionError("hypernetwork training started on SDXL")
