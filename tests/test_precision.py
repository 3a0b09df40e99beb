"""Precision and memory switches, exercised on the CPU: bf16, gradient checkpointing, frozen-weight casting,
the fp32 vectors in saved files, and a VAE decode that survives fp16 overflow."""
import copy
import dataclasses
import json
from common import events
from pathlib import Path

import pytest
import torch

from helpers_cli import run_cli
from helpers_images import make_dataset
from trainer.prompts.conditioning import PromptEncoder
from trainer.embeddings.library import create_embedding
from common.errors import UserError
from trainer.models.precision import gradient_checkpointing, hold_frozen_weights, resolve_mixed_precision
from trainer.sampling.txt2img import _decode
from trainer.training.textual_inversion import train_embedding
from trainer.training.config import TrainConfig

TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"


def weights_digest(module) -> list:
    return [(name, tensor.dtype, tensor.double().sum().item()) for name, tensor in module.state_dict().items()]


def test_precision_choices_follow_the_device():
    assert resolve_mixed_precision("", "cpu") == "no"
    assert resolve_mixed_precision("", "cuda") == "fp16"
    assert resolve_mixed_precision("bf16", "cpu") == "bf16"
    with pytest.raises(UserError, match="fp16 mixed precision needs a CUDA GPU; on the cpu choose bf16 or no."):
        resolve_mixed_precision("fp16", "cpu")
    with pytest.raises(UserError, match="must be no, fp16 or bf16"):
        TrainConfig(name="x", dataset="d", mixed_precision="fp8").validate()


def test_bf16_with_checkpointing_trains_fp32_vectors_and_leaves_the_model_as_it_was(tmp_path, demo_model):
    make_dataset(tmp_path / "data", size=(64, 64), count=2)
    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "lean", init_text="photo", num_vectors=2,
                     embeddings_dir=tmp_path / "emb")
    before = weights_digest(demo_model.unet) + weights_digest(demo_model.text_encoder)
    messages = []
    cfg = TrainConfig(name="lean", dataset=str(tmp_path / "data"), log_dir=str(tmp_path / "logs"), width=64,
                      height=64, steps=3, save_every=3, preview_every=3, seed=0, mixed_precision="bf16",
                      gradient_checkpointing=True)
    losses = []

    def progress(event):
        messages.append(getattr(event, "text", ""))
        if isinstance(event, events.Step):
            losses.append(event.loss)

    result = train_embedding(demo_model, cfg, tmp_path / "emb", TEMPLATES, progress=progress)
    assert result.status == "finished", result.message
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert ("Precision: bf16 mixed precision, frozen weights in float32, trained weights in float32, gradient "
            "checkpointing on.") in messages
    saved = torch.load(result.trained_file, weights_only=True)
    [vectors] = saved["string_to_param"].values()
    assert vectors.dtype == torch.float32 and torch.isfinite(vectors).all()
    [copy_file] = [p for p in (Path(result.log_dir) / "embeddings").glob("*.pt") if not p.stem.endswith("-best")]
    [copied] = torch.load(copy_file, weights_only=True)["string_to_param"].values()
    assert copied.dtype == torch.float32
    assert list((Path(result.log_dir) / "images").glob("lean-3.png"))  # the preview rendered mid-run
    assert not demo_model.unet.is_gradient_checkpointing
    assert weights_digest(demo_model.unet) + weights_digest(demo_model.text_encoder) == before
    settings = json.loads(next(Path(result.log_dir).glob("settings-*.json")).read_text())
    assert settings["mixed_precision"] == "bf16" and settings["gradient_checkpointing"] is True

    # The same process trains in fp32 next (accelerate's one-precision-per-process state is reset).
    cfg = dataclasses.replace(cfg, steps=4, mixed_precision="no", gradient_checkpointing=False, preview_every=0,
                              save_every=0)
    assert train_embedding(demo_model, cfg, tmp_path / "emb", TEMPLATES).status == "finished"


def test_checkpointing_gives_the_same_gradient_as_keeping_activations(demo_model):
    vectors = torch.nn.Parameter(torch.randn(2, demo_model.text_width) * 0.1)
    encoder = PromptEncoder(demo_model.tokenizer, demo_model.text_encoder, {"emb": vectors})
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))

    def gradient(checkpointing):
        vectors.grad = None
        with gradient_checkpointing(demo_model.unet, checkpointing):
            assert demo_model.unet.is_gradient_checkpointing == checkpointing
            out = demo_model.unet(latents, torch.tensor([500]), encoder(["a photo of emb"])).sample
            out.square().mean().backward()
        return vectors.grad.clone()

    plain, checkpointed = gradient(False), gradient(True)
    assert plain.abs().sum() > 0 and torch.allclose(plain, checkpointed, rtol=1e-4, atol=1e-7)
    assert not demo_model.unet.is_gradient_checkpointing


def test_frozen_weights_are_held_in_half_and_restored_exactly(demo_model):
    model = dataclasses.replace(demo_model, unet=copy.deepcopy(demo_model.unet),
                                text_encoder=copy.deepcopy(demo_model.text_encoder))
    before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    with hold_frozen_weights(model, torch.bfloat16):
        assert {p.dtype for p in model.unet.parameters()} == {torch.bfloat16}
        assert {p.dtype for p in model.text_encoder.parameters()} == {torch.bfloat16}
        bytes_half = sum(p.numel() * p.element_size() for p in model.unet.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.unet.state_dict().items())  # bit for bit
    assert bytes_half * 2 == sum(p.numel() * p.element_size() for p in model.unet.parameters())


def test_vae_decode_survives_fp16_overflow(demo_model):
    latents = torch.full((1, 4, 8, 8), 2e4)  # beyond fp16's 65504 once unscaled; fine in fp32
    half = copy.deepcopy(demo_model.vae).to(torch.float16)
    model = dataclasses.replace(demo_model, vae=half)
    reference = _decode(dataclasses.replace(demo_model, vae=copy.deepcopy(half).float()), latents)
    with torch.no_grad():
        raw = half.decode((latents / model.latent_scale).half()).sample
    assert not torch.isfinite(raw).all()  # fp16 alone gives NaNs here
    image = _decode(model, latents)  # decoded again in fp32, then the VAE is fp16 again
    assert image.tobytes() == reference.tobytes() and next(half.parameters()).dtype == torch.float16


def test_cli_precision_flags_and_their_refusals(work):
    run_cli(["create-embedding", "--name", "cat", "--init-text", "a cat"], work)
    small = ["--width", 64, "--height", 64, "--seed", 1, "--quiet", "--save-every", 0, "--preview-every", 0]
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 2,
                            "--mixed-precision", "fp16", *small], work)
    assert code == 2 and err.strip() == ("error: fp16 mixed precision needs a CUDA GPU; on the cpu choose bf16 "
                                         "or no.")
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 2,
                              "--mixed-precision", "bf16", "--gradient-checkpointing", "--latent-cache-dir",
                              "my-cache", *small], work)
    assert code == 0, err
    assert len(list((work / "my-cache").rglob("*.safetensors"))) == 4
    [settings] = list((work / "textual_inversion").glob("*/cat/settings-*.json"))
    cfg = TrainConfig.load(settings)
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.latent_cache_dir) == ("bf16", True, "my-cache")
    code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--steps", 3,
                            "--no-latent-cache", "--mixed-precision", "no", *small], work)
    assert code == 0, err


def test_train_tab_speed_and_memory_controls_round_trip_the_settings(tmp_path, demo_model):
    import gradio as gr

    from trainer.workspace import Folders, Workspace
    from webui import train_tab

    ws = Workspace(Folders(embeddings_dir=tmp_path / "emb", templates_dir=TEMPLATES), "cpu", model=demo_model)
    with gr.Blocks():
        c = train_tab.build(ws)
    keys = [key for key, _ in c.form]
    assert {"mixed_precision", "gradient_checkpointing", "latent_cache_dir"} <= set(keys)
    assert [value for _, value in c.mixed_precision.choices] == ["", "no", "fp16", "bf16"]
    cfg = TrainConfig(name="x", dataset="data", mixed_precision="bf16", gradient_checkpointing=True,
                      latent_cache_dir="cache-here")
    again = train_tab.config_from_form(dict(zip(keys, train_tab.form_from_config(cfg, c.form))), None)
    assert (again.mixed_precision, again.gradient_checkpointing, again.latent_cache_dir) == ("bf16", True,
                                                                                            "cache-here")
