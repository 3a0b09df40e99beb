"""The training settings: one plain object shared by the CLI, the UI and the settings JSON."""
import dataclasses
import json
import types
from dataclasses import dataclass
from pathlib import Path

from common.errors import UserError


MIXED_PRECISION_CHOICES = ("", "no", "fp16", "bf16")  # "": the device's default
LATENT_SAMPLING = ("once", "deterministic", "random")
CLIP_GRAD_MODES = ("disabled", "value", "norm")


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

    def check(self, train_width: int, train_height: int):
        """UserError sentences for settings txt2img would refuse (a bad one is told before training, not at
        the first preview). A size of 0 is the training size, which has rules of its own."""
        from trainer.sampling.txt2img import Txt2ImgParams, validate_params

        validate_params(Txt2ImgParams(prompt=self.prompt, negative_prompt=self.negative_prompt, sampler=self.sampler,
                                      steps=self.steps, cfg_scale=self.cfg_scale, seed=self.seed,
                                      width=self.width or train_width or 512,
                                      height=self.height or train_height or 512))


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
    # speed and memory (trainer/training/latent_cache.py, trainer/models/precision.py)
    latent_cache: bool = True  # keep encoded images on disk across runs
    latent_cache_dir: str = ""  # "": <log_dir>/latent_cache
    mixed_precision: str = ""  # "": fp16 on CUDA, no elsewhere; or "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False  # recompute UNet activations in backward: less memory, slower steps
    validate_every: int = 100  # validation loss on a fixed set every N steps (and before the first), 0 = off
    early_stop: int = 0  # stop when validation has not improved for K checks, 0 = off
    validation_split: float = 0.0  # share of the images held out for validation, 0 = the training images
    preview: PreviewSettings | None = None  # None: the reference's default preview
    model: str = ""  # informational: the checkpoint the settings were made with

    def validate(self, what: str = "embedding"):
        """Every rule the settings must follow, each with its one sentence (UserError). Called once, where settings
        come in: the Workspace (the page, the HTTP API) and the CLI. `what`: "embedding" or "hypernetwork"."""
        if not self.name:
            article = "an" if what[0] in "aeiou" else "a"
            raise UserError(f"Choose {article} {what} to train (create one in the Create {what} tab).")
        if self.batch_size < 1:
            raise UserError(f"Batch size must be at least 1, not {self.batch_size}.")
        if self.grad_accum < 1:
            raise UserError(f"Gradient accumulation steps must be at least 1, not {self.grad_accum}.")
        if self.steps < 1:
            raise UserError(f"Max steps must be at least 1, not {self.steps}.")
        for label, size in (("Width", self.width), ("Height", self.height)):  # 0: the model's native size
            if size and (not 64 <= size <= 2048 or size % 8):
                raise UserError(f"{label} must be a multiple of 8 between 64 and 2048, not {size}.")
        if self.save_every < 0 or self.preview_every < 0:
            raise UserError("Save intervals must be 0 (off) or a positive number of steps.")
        if (self.save_every or self.preview_every) and not str(self.log_dir).strip():
            raise UserError(f"Set a log directory to save {what}s or images every N steps.")
        if not 0 <= self.tag_dropout <= 1:
            raise UserError(f"Tag dropout must be between 0 and 1, not {self.tag_dropout}.")
        if self.latent_sampling not in LATENT_SAMPLING:
            raise UserError(f"Latent sampling method must be one of {', '.join(LATENT_SAMPLING)}, "
                            f"not {self.latent_sampling!r}.")
        if self.clip_grad_mode not in CLIP_GRAD_MODES:
            raise UserError(f"Gradient clipping must be disabled, value or norm, not {self.clip_grad_mode!r}.")
        if self.mixed_precision not in MIXED_PRECISION_CHOICES:
            raise UserError(f"Mixed precision must be no, fp16 or bf16, not {self.mixed_precision!r}.")
        if self.validate_every < 0 or self.early_stop < 0:
            raise UserError("Validate every N steps and the early stop's K checks must be 0 (off) or positive.")
        if self.early_stop and not self.validate_every:
            raise UserError("Early stop needs validation: set Validate every N steps above 0.")
        if not 0 <= self.validation_split < 1:
            raise UserError(f"Validation share must be at least 0 and below 1, not {self.validation_split}.")
        if not str(self.dataset).strip():
            raise UserError("Dataset directory is empty; point it at a folder of images.")
        self.schedules(start_step=0)  # the schedules' syntax, and their steps increasing
        if self.preview_every and self.preview is not None:
            self.preview.check(self.width, self.height)

    def schedules(self, start_step: int, what: str = "embedding"):
        """(learning-rate schedule, clip-value schedule or None) from `start_step` on. UserError sentences for a
        schedule that makes no sense, and for a run with nothing left to train: max steps reached already, or a
        schedule that ends before `start_step`."""
        from trainer.training.schedule import parse_schedule

        lr_schedule = parse_schedule(self.learn_rate, self.steps, start_step, "learning rate")
        clip_schedule = None
        if self.clip_grad_mode != "disabled":
            clip_schedule = parse_schedule(self.clip_grad_value, self.steps, start_step, "gradient clipping")
        if start_step >= self.steps:
            raise UserError(f"{what.capitalize()} '{self.name}' already has {start_step} steps, not below max steps "
                            f"{self.steps}; raise Max steps to train further.")
        return lr_schedule, clip_schedule

    def latent_cache_folder(self):
        """Where encoded images are kept between runs (None: in memory for this run only)."""
        from trainer.training.latent_cache import default_cache_dir

        if not self.latent_cache:
            return None
        if str(self.latent_cache_dir).strip():
            return Path(self.latent_cache_dir)
        return default_cache_dir(self.log_dir)

    def to_json(self) -> dict:
        # "preview_from_txt2img": the Train tab's "Read parameters ... from txt2img tab", named as the reference does
        return {**dataclasses.asdict(self), "preview_from_txt2img": self.preview is not None}

    @classmethod
    def from_json(cls, data: dict, where: str = "Settings") -> "TrainConfig":
        values = settings_values(data, where)
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in values and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise UserError(f"{where}: {' and '.join(missing)} {'is' if len(missing) == 1 else 'are'} missing.")
        return cls(**values)

    @classmethod
    def load(cls, path) -> "TrainConfig":
        return cls.from_json(read_settings_file(path), f"Settings file {path}")


def read_settings_file(path) -> dict:
    """The JSON object in a settings file (ours or the reference's), not yet checked field by field."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"Cannot read settings file {path}: it is not UTF-8 text.") from None
    except OSError as e:
        raise UserError(f"Cannot read settings file {path}: {e.strerror or e}.") from None
    except ValueError as e:
        raise UserError(f"Cannot read settings file {path}: it is not valid JSON ({e}).") from None
    if not isinstance(data, dict):
        raise UserError(f"Settings file {path} holds a JSON {_json_kind(data)}, not an object of settings "
                        'like {"name": "my-embedding", "steps": 1000}.')
    return data


def settings_values(data, where: str = "Settings") -> dict:
    """The known fields of `data` (our names or the reference's), each checked and converted to its type
    (a whole number given as 4.0 or "4" is fine; "abc" or null for a number is a UserError naming the field)."""
    if not isinstance(data, dict):
        raise UserError(f"{where} must be a JSON object of settings, not a JSON {_json_kind(data)}.")
    fields = {f.name: f.type for f in dataclasses.fields(TrainConfig)}
    return {key: _typed(key, value, fields[key], where)
            for key, value in normalise_settings(data).items() if key in fields}


_KIND_WORDS = {int: "a whole number", float: "a number", bool: "true or false", str: "text"}


def _json_kind(value) -> str:
    return {list: "array", str: "string", bool: "boolean", int: "number", float: "number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _typed(key: str, value, kind, where: str):
    optional = False
    if isinstance(kind, types.UnionType):
        options = [option for option in kind.__args__ if option is not type(None)]
        optional, kind = len(options) < len(kind.__args__), options[0]
    if value is None:
        if optional:
            return None
        raise UserError(f"{where}: {key} must be {_KIND_WORDS.get(kind, 'set')}, not null.")
    if kind is PreviewSettings:
        if isinstance(value, PreviewSettings):
            return value
        if not isinstance(value, dict):
            raise UserError(f"{where}: preview must be an object of preview settings, not {value!r}.")
        preview_fields = {f.name: f.type for f in dataclasses.fields(PreviewSettings)}
        return PreviewSettings(**{k: _typed(f"preview.{k}", v, preview_fields[k], where)
                                  for k, v in value.items() if k in preview_fields})
    converted = _convert(value, kind)
    if converted is None:
        raise UserError(f"{where}: {key} must be {_KIND_WORDS[kind]}, not {json.dumps(value)[:60]}.")
    return converted


def _convert(value, kind):
    """`value` as `kind`, or None when it is not one."""
    if kind is bool:
        return value if isinstance(value, bool) else {0: False, 1: True}.get(value) if type(value) is int else None
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if kind is str:
        return str(value)
    try:
        number = float(value)
    except ValueError:
        return None
    if kind is float:
        return number
    return int(number) if number.is_integer() else None


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


REFERENCE_PREVIEW_FIELDS = {"preview_prompt": "prompt", "preview_negative_prompt": "negative_prompt",
                            "preview_sampler_name": "sampler", "preview_steps": "steps",
                            "preview_cfg_scale": "cfg_scale", "preview_seed": "seed", "preview_width": "width",
                            "preview_height": "height"}


def normalise_settings(data: dict) -> dict:
    """Accept our own settings JSON and the reference webui's (its field names mapped onto ours)."""
    out = {REFERENCE_FIELD_NAMES.get(k, k): v for k, v in data.items()}
    if "template_filename" in data and "template" not in data:
        out["template"] = Path(str(data["template_filename"])).name
    if "preview_from_txt2img" in data and not data["preview_from_txt2img"]:
        out["preview"] = None
    elif data.get("preview_from_txt2img") and not isinstance(data.get("preview"), dict):  # the reference's keys
        out["preview"] = {ours: data[theirs] for theirs, ours in REFERENCE_PREVIEW_FIELDS.items() if theirs in data}
    return out
