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
    from trainer.models.loading import load_model

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
