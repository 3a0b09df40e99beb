"""Test-wide settings: nothing may reach the network, ever."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def demo_model():
    """The embedded demo model, loaded once through the same code a user's checkpoint goes through."""
    from trainer.models import load_model

    return load_model("demo", "models/Stable-diffusion", "cpu")


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """Tiny models run faster on one thread than on two busy ones (and CI has two cores)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture()
def work(tmp_path):
    """A user's working folder: the shipped prompt templates, and four real photos (64 px) in data/."""
    from helpers_cli import workdir
    from helpers_images import make_dataset

    folder = workdir(tmp_path)
    make_dataset(folder / "data", size=(64, 64))
    return folder


@pytest.fixture(scope="session")
def sdxl_files(tmp_path_factory):
    """A tiny SDXL-shaped model saved as a diffusers folder (ckpt/xl), as one original-layout file
    (ckpt/xl.safetensors) and the config-only folder that file needs (config/); see helpers_sdxl."""
    from helpers_sdxl import (save_sdxl_config_folder, save_sdxl_diffusers_folder, save_sdxl_single_file,
                              tiny_sdxl_components)

    root = tmp_path_factory.mktemp("sdxl")
    components = tiny_sdxl_components(seed=5)
    save_sdxl_diffusers_folder(components, root / "ckpt" / "xl")
    save_sdxl_single_file(components, root / "ckpt" / "xl.safetensors")
    save_sdxl_config_folder(components, root / "config")
    return {"root": root, "ckpt_dir": root / "ckpt", "config": root / "config", "components": components}


@pytest.fixture(scope="session")
def sdxl_model(sdxl_files):
    """The tiny SDXL model loaded from its diffusers folder through the user's path (shared: read only)."""
    from trainer.models import load_model

    return load_model("xl", sdxl_files["ckpt_dir"], "cpu")
