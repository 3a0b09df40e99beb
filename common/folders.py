"""Where the app and the commands read and write: every folder resolved against one data folder.

Imports nothing heavy (no torch), so `app.py` can check the folders before the engine loads.
"""
import os
from dataclasses import dataclass
from pathlib import Path

DATA_DIR_ENV = "TI_TRAINER_DATA_DIR"  # the data folder when --data-dir is not given
SHIPPED_TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"
DEFAULT_SUBFOLDERS = {"ckpt_dir": "models/Stable-diffusion", "embeddings_dir": "embeddings",
                      "hypernetwork_dir": "models/hypernetworks", "templates_dir": "textual_inversion_templates",
                      "outputs_dir": "outputs"}


def default_data_dir() -> Path:
    """$TI_TRAINER_DATA_DIR, else the folder the app or command runs in."""
    return Path(os.environ.get(DATA_DIR_ENV) or ".").expanduser().resolve()


@dataclass
class Folders:
    ckpt_dir: Path = Path("models/Stable-diffusion")
    embeddings_dir: Path = Path("embeddings")
    hypernetwork_dir: Path = Path("models/hypernetworks")
    templates_dir: Path = Path("textual_inversion_templates")
    outputs_dir: Path = Path("outputs")
    data_dir: Path = Path(".")  # what relative paths typed in the page (dataset, log directory, ...) start from

    @classmethod
    def under(cls, data_dir=None, **given) -> "Folders":
        """Every folder resolved against one data folder (`data_dir`, else `default_data_dir()`): the defaults
        (embeddings/, models/..., outputs/) and relative paths in `given` (None: the default). The prompt
        templates come from the data folder when it has its own textual_inversion_templates/, else the shipped ones."""
        root = Path(data_dir).expanduser().resolve() if data_dir else default_data_dir()
        folders = {}
        for key, default in DEFAULT_SUBFOLDERS.items():
            folders[key] = (root / Path(given.get(key) or default).expanduser()).resolve()
        if not given.get("templates_dir") and not folders["templates_dir"].is_dir():
            folders["templates_dir"] = SHIPPED_TEMPLATES
        return cls(**folders, data_dir=root)

    def resolve(self, path) -> Path:
        """A path the user typed, made absolute against the data folder."""
        return (Path(self.data_dir) / Path(str(path)).expanduser()).resolve()

    @property
    def log_root(self) -> Path:
        return self.resolve("textual_inversion")
