"""Checkpoint listing and loading: demo, diffusers folders and single files, offline and pickle-safe."""
import json
import pickle
import socket
from pathlib import Path

import pytest
import torch

from helpers_models import (assert_same_weights, save_config_folder, save_diffusers_folder, save_single_file,
                            tiny_components)
from trainer.models.demo import DEMO_WEIGHTS
from common.errors import UserError
from trainer.models.loading import (CONFIGS_DIR, checkpoint_hash, detect_family, file_sha256, list_checkpoints,
                            load_model, looks_like_v_prediction)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open a network connection fails the test."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture(scope="module")
def sd1():
    return tiny_components("sd1", seed=1)


@pytest.fixture(scope="module")
def sd2():
    return tiny_components("sd2", seed=2)


def assert_model_equals(model, components):
    for key in ("unet", "vae", "text_encoder"):
        assert_same_weights(components[key], getattr(model, key))
        module = getattr(model, key)
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())
        assert all(p.dtype == torch.float32 for p in module.parameters())


# ------------------------------------------------------------------------------------------- listing

def test_list_checkpoints(tmp_path, sd1):
    assert list_checkpoints(tmp_path / "missing") == ["demo"]
    save_diffusers_folder(sd1, tmp_path / "My Folder Model")
    (tmp_path / "b.safetensors").write_bytes(b"x")
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / "sub" / "deeper" / "A.ckpt").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "b.yaml").write_text("model: {}")
    names = list_checkpoints(tmp_path)
    # The folder's own unet/diffusion_pytorch_model.safetensors is part of the folder, not a checkpoint.
    assert names == ["demo", "b.safetensors", "My Folder Model", "sub/deeper/A.ckpt"]


# ---------------------------------------------------------------------------------------------- demo

def test_demo_model():
    model = load_model("demo", "unused")
    assert model.name == "demo"
    assert model.text_width == 64 and model.prediction_type == "epsilon"
    assert model.vae_scale_factor == 8 and model.native_size == 128
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    # The demo's hash is its shipped weights file's, like any checkpoint's.
    assert model.checkpoint_hash == checkpoint_hash(DEMO_WEIGHTS) and len(model.checkpoint_hash) == 10
    assert not any(p.requires_grad for p in model.unet.parameters())


# ----------------------------------------------------------------------------------- diffusers folders

def test_diffusers_folder_round_trip(tmp_path, sd1):
    save_diffusers_folder(sd1, tmp_path / "tiny")
    model = load_model("tiny", tmp_path)
    assert model.name == "tiny"
    assert_model_equals(model, sd1)
    assert model.scheduler_config["prediction_type"] == "epsilon"
    assert model.scheduler_config["_class_name"] == "DDPMScheduler"
    assert model.tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    unet_file = tmp_path / "tiny" / "unet" / "diffusion_pytorch_model.safetensors"
    assert model.checkpoint_hash == file_sha256(unet_file)[:10]


def test_diffusers_folder_sd2_v(tmp_path, sd2):
    folder = save_diffusers_folder(sd2, tmp_path / "tiny2")
    model = load_model(str(folder), tmp_path / "elsewhere")  # a path outside ckpt_dir works too
    assert_model_equals(model, sd2)
    assert model.prediction_type == "v_prediction"
    assert model.text_width == 48


# ---------------------------------------------------------------------------------------- single files

@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_single_file_round_trip_sd1(tmp_path, sd1, suffix):
    path = save_single_file(sd1, tmp_path / "ckpts" / f"tiny{suffix}")
    config = save_config_folder(sd1, tmp_path / "config")
    model = load_model(f"tiny{suffix}", tmp_path / "ckpts", config_dir=config)
    assert model.name == f"tiny{suffix}"
    assert_model_equals(model, sd1)
    assert model.prediction_type == "epsilon"
    assert model.checkpoint_hash == file_sha256(path)[:10]
    assert model.tokenizer.pad_token == "<|endoftext|>"  # SD 1.x pads with the end token


def test_single_file_round_trip_sd2_openclip_layout(tmp_path, sd2):
    path = save_single_file(sd2, tmp_path / "tiny2.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        keys = set(f.keys())
    assert "cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight" in keys
    assert "first_stage_model.decoder.up.3.upsample.conv.weight" in keys
    config = save_config_folder(sd2, tmp_path / "config")
    model = load_model(str(path), tmp_path, config_dir=config)
    assert_model_equals(model, sd2)
    assert model.prediction_type == "v_prediction"  # from the config folder's scheduler
    assert model.tokenizer.pad_token == "!"  # OpenCLIP pads with "!"


def test_sidecar_yaml_decides_prediction_type(tmp_path, sd1):
    path = save_single_file(sd1, tmp_path / "tiny.safetensors")
    config = save_config_folder(sd1, tmp_path / "config")
    path.with_suffix(".yaml").write_text('model:\n  params:\n    parameterization: "v"\n')
    assert load_model("tiny.safetensors", tmp_path, config_dir=config).prediction_type == "v_prediction"
    path.with_suffix(".yaml").write_text("model:\n  params:\n    linear_start: 0.00085\n")
    assert load_model("tiny.safetensors", tmp_path, config_dir=config).prediction_type == "epsilon"


# ------------------------------------------------------------------------------------ family detection

def fake_state(text_key: str, width: int) -> dict:
    return {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
            text_key: torch.zeros(49408, width)}


def test_detect_family():
    assert detect_family(fake_state("cond_stage_model.transformer.text_model.embeddings.token_embedding.weight", 768), "x") == "sd1"
    assert detect_family(fake_state("cond_stage_model.model.token_embedding.weight", 1024), "x") == "sd2"
    with pytest.raises(UserError, match="neither Stable Diffusion 1.x"):
        detect_family(fake_state("cond_stage_model.model.token_embedding.weight", 32), "x")
    with pytest.raises(UserError, match="SDXL"):
        detect_family({"conditioner.embedders.0.transformer.text_model.embeddings.token_embedding.weight": torch.zeros(1)}, "x")


def test_tiny_model_without_config_is_refused_with_a_sentence(tmp_path, sd1):
    save_single_file(sd1, tmp_path / "tiny.safetensors")
    with pytest.raises(UserError, match=r"^Checkpoint 'tiny.safetensors' has a text width of 32"):
        load_model("tiny.safetensors", tmp_path)


class _ConstantUNet(torch.nn.Module):
    """Stands in for a UNet whose output at t=999 is `offset` away from its input."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.config = type("Config", (), {"in_channels": 4, "cross_attention_dim": 1024})()

    def forward(self, sample, timestep, encoder_hidden_states):
        assert timestep.item() == 999 and encoder_hidden_states.shape == (1, 2, 1024)
        return type("Out", (), {"sample": sample + self.offset})()


def test_v_prediction_probe():
    assert looks_like_v_prediction(_ConstantUNet(-1.5))
    assert not looks_like_v_prediction(_ConstantUNet(0.0))


# -------------------------------------------------------------------------------------------- errors

def test_broken_and_unknown_files_are_user_errors(tmp_path):
    (tmp_path / "broken.safetensors").write_bytes(b"this is not a safetensors file")
    with pytest.raises(UserError, match=r"^Checkpoint 'broken.safetensors' could not be read"):
        load_model("broken.safetensors", tmp_path)
    from safetensors.torch import save_file

    save_file({"some.weight": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(UserError, match=r"not a Stable Diffusion 1.x/2.x model \(no UNet weights found\)"):
        load_model("other.safetensors", tmp_path)
    with pytest.raises(UserError, match="was not found"):
        load_model("missing.safetensors", tmp_path)
    (tmp_path / "plain_folder").mkdir()
    with pytest.raises(UserError, match="not a diffusers model"):
        load_model("plain_folder", tmp_path)


def test_incomplete_diffusers_folder(tmp_path, sd1):
    folder = save_diffusers_folder(sd1, tmp_path / "tiny")
    for weights in (folder / "vae").glob("diffusion_pytorch_model*"):
        weights.unlink()
    with pytest.raises(UserError, match=r"^The diffusers model 'tiny' could not be loaded"):
        load_model("tiny", tmp_path)


class _Payload:
    """Unpickling this would call `marker.touch()`: the exploit a malicious .ckpt carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_ckpt_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {"model.diffusion_model.x": torch.zeros(1)}, "evil": _Payload(marker)},
               tmp_path / "evil.ckpt")
    with open(tmp_path / "legacy.ckpt", "wb") as f:  # a plain (non-zip) pickle
        pickle.dump(_Payload(marker), f)
    for name in ("evil.ckpt", "legacy.ckpt"):
        with pytest.raises(UserError, match=rf"^Checkpoint '{name}' contains Python objects other than weights"):
            load_model(name, tmp_path)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------- configs

def test_shipped_family_configs():
    from diffusers import UNet2DConditionModel

    for family, width, prediction in (("sd1", 768, "epsilon"), ("sd2", 1024, "epsilon"), ("sd2-v", 1024, "v_prediction")):
        folder = CONFIGS_DIR / family
        unet = UNet2DConditionModel.load_config(str(folder), subfolder="unet")
        text = json.loads((folder / "text_encoder" / "config.json").read_text())
        scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        assert unet["cross_attention_dim"] == width and text["hidden_size"] == width
        assert unet["block_out_channels"] == [320, 640, 1280, 1280]
        assert scheduler["prediction_type"] == prediction and scheduler["beta_schedule"] == "scaled_linear"
        assert (folder / "model_index.json").is_file() and (folder / "vae" / "config.json").is_file()
    assert json.loads((CONFIGS_DIR / "sd2" / "text_encoder" / "config.json").read_text())["num_hidden_layers"] == 23


def test_checkpoint_hash_of_file(tmp_path):
    path = tmp_path / "x.ckpt"
    path.write_bytes(b"abc")
    assert checkpoint_hash(path) == "ba7816bf8f"  # sha256("abc")


def test_diffusers_folder_with_only_fp16_weights_loads_as_fp32(tmp_path, sd1):
    folder = save_diffusers_folder(sd1, tmp_path / "tiny")
    for weights in (folder / "unet").glob("diffusion_pytorch_model*"):
        weights.unlink()
    half_unet = tiny_components("sd1", seed=1)["unet"].half()
    half_unet.save_pretrained(folder / "unet", variant="fp16")
    model = load_model("tiny", tmp_path)
    assert all(p.dtype == torch.float32 for p in model.unet.parameters())
    assert_same_weights(half_unet.float(), model.unet)
