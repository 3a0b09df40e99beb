"""The training settings: one plain object shared by the CLI, the UI and the settings JSON."""
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError


@dataclass
class PreviewSettings:
    """How previews are made; `prompt` empty means "the batch's first caption" (the reference's default)."""

    prompt: str = ""
    negative_prompt: str = ""
    sampler: str = "Euler a"
    steps: int = 20
    cfg_scale: float = 7.0
    seed: int = -1
    width: int = 0  # 0: the training size
    height: int = 0


@dataclass
class TrainConfig:
    name: str  # the embedding (or hypernetwork) to train
    dataset: str
    log_dir: str = "textual_inversion"
    template: str = "style_filewords.txt"
    learn_rate: str = "0.005"
    batch_size: int = 1
    grad_accum: int = 1
    width: int = 512
    height: int = 512
    no_resize: bool = False
    steps: int = 100000
    save_every: int = 500
    preview_every: int = 500
    alpha_weight: bool = False
    png_embedding: bool = True
    shuffle_tags: bool = False
    tag_dropout: float = 0.0
    latent_sampling: str = "once"
    clip_grad_mode: str = "disabled"  # disabled | value | norm
    clip_grad_value: str = "0.1"
    seed: int | None = None
    save_optimizer_state: bool = True
    word_regex: str = ""
    join_string: str = " "
    loss_csv_every: int = 1
    validate_every: int = 100  # validation loss on a fixed set every N steps (and before the first), 0 = off
    early_stop: int = 0  # stop when validation has not improved for K checks, 0 = off
    validation_split: float = 0.0  # share of the images held out for validation, 0 = the training images
    preview: PreviewSettings | None = None  # None: the reference's default preview
    model: str = ""  # informational: the checkpoint the settings were made with

    def validate(self):
        if not self.name:
            raise UserError("Choose an embedding to train (create one in the Create embedding tab).")
        if not str(self.learn_rate).strip():
            raise UserError("Learning rate is empty; write a number like 0.005 or a schedule like 0.005:100, 1e-3.")
        if self.batch_size < 1:
            raise UserError(f"Batch size must be at least 1, not {self.batch_size}.")
        if self.grad_accum < 1:
            raise UserError(f"Gradient accumulation steps must be at least 1, not {self.grad_accum}.")
        if self.steps < 1:
            raise UserError(f"Max steps must be at least 1, not {self.steps}.")
        if self.save_every < 0 or self.preview_every < 0:
            raise UserError("Save intervals must be 0 (off) or a positive number of steps.")
        if (self.save_every or self.preview_every) and not str(self.log_dir).strip():
            raise UserError("Set a log directory to save embeddings or images every N steps.")
        if not 0 <= self.tag_dropout <= 1:
            raise UserError(f"Tag dropout must be between 0 and 1, not {self.tag_dropout}.")
        if self.clip_grad_mode not in ("disabled", "value", "norm"):
            raise UserError(f"Gradient clipping must be disabled, value or norm, not {self.clip_grad_mode!r}.")
        if self.validate_every < 0 or self.early_stop < 0:
            raise UserError("Validate every N steps and the early stop's K checks must be 0 (off) or positive.")
        if self.early_stop and not self.validate_every:
            raise UserError("Early stop needs validation: set Validate every N steps above 0.")
        if not 0 <= self.validation_split < 1:
            raise UserError(f"Validation share must be at least 0 and below 1, not {self.validation_split}.")
        if not str(self.dataset).strip():
            raise UserError("Dataset directory is empty; point it at a folder of images.")

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in normalise_settings(data).items() if k in known}
        if isinstance(values.get("preview"), dict):
            preview_known = {f.name for f in dataclasses.fields(PreviewSettings)}
            values["preview"] = PreviewSettings(**{k: v for k, v in values["preview"].items() if k in preview_known})
        try:
            return cls(**values)
        except TypeError as e:
            raise UserError(f"Settings file is incomplete: {e}.") from None

    @classmethod
    def load(cls, path) -> "TrainConfig":
        try:
            return cls.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:
            raise UserError(f"Cannot read settings file {path}: {e}.") from None


# Fields the reference webui writes into its settings JSON, for users who load those files.
REFERENCE_FIELD_NAMES = {
    "embedding_name": "name", "learn_rate": "learn_rate", "batch_size": "batch_size",
    "gradient_step": "grad_accum", "data_root": "dataset", "log_directory": "log_dir",
    "training_width": "width", "training_height": "height", "varsize": "no_resize", "steps": "steps",
    "clip_grad_mode": "clip_grad_mode", "clip_grad_value": "clip_grad_value",
    "shuffle_tags": "shuffle_tags", "tag_drop_out": "tag_dropout", "latent_sampling_method": "latent_sampling",
    "use_weight": "alpha_weight", "create_image_every": "preview_every",
    "save_embedding_every": "save_every", "save_image_with_stored_embedding": "png_embedding",
}


def normalise_settings(data: dict) -> dict:
    """Accept our own settings JSON and the reference webui's (its field names mapped onto ours)."""
    out = {REFERENCE_FIELD_NAMES.get(k, k): v for k, v in data.items()}
    if "template_filename" in data and "template" not in data:
        out["template"] = Path(str(data["template_filename"])).name
    return out
