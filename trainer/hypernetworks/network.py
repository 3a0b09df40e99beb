"""Hypernetworks of the reference webui's kind: the module, its `.pt` file, creation and the folder of them.

A hypernetwork holds, for each attention *context width* it knows (768 = SD 1.x text, 1024 = SD 2.x text,
320/640/1280 = the UNet's self-attention at each level), a pair of small MLPs: one rewrites the context that
becomes the attention keys, the other the context that becomes the values. Each MLP is a residual
``x + mlp(x) * multiplier``, so a fresh one (tiny weights) barely changes the model. How the pairs are plugged
into the UNet lives in `trainer.hypernetworks.attention`; training in `trainer.training.hypernetwork`.

File layout (``torch.save`` of a dict, as the reference writes it)::

    {768: (k_state_dict, v_state_dict), 320: (...), ...,     # keys "linear.<n>.weight" / "linear.<n>.bias"
     "step": 0, "name": "x", "layer_structure": [1, 2, 1], "activation_func": "linear", "is_layer_norm": False,
     "weight_initialization": "Normal", "sd_checkpoint": ..., "sd_checkpoint_name": ..., "activate_output": False,
     "use_dropout": False, "dropout_structure": [0, 0, 0], "last_layer_dropout": False, "optional_info": None}

Files are written in the legacy (non-zip) container the reference's pickle check accepts, atomically, and read
with ``torch.load(weights_only=True)`` only. Older layouts (no structure keys, ``linear1``/``linear2`` weights,
``use_dropout`` without a structure) are read too.
"""
from __future__ import annotations

import collections
import hashlib
import re
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from trainer.embeddings.files import load_weights_only, optimizer_state_path, torch_save_compatible
from trainer.embeddings.library import EmbeddingReadError, clean_embedding_name
from common.errors import UserError
from common.files import atomic_write
from trainer.locks import refuse_if_locked
from trainer.names import check_name_length, walk_files

#: The sizes the reference offers in "Modules", and the ones it ticks by default (SD 1.x).
REFERENCE_SIZES = (768, 1024, 320, 640, 1280)
WEIGHT_INITS = ("Normal", "KaimingUniform", "KaimingNormal", "XavierUniform", "XavierNormal")
DEFAULT_LAYER_STRUCTURE = "1, 2, 1"
DEFAULT_DROPOUT_STRUCTURE = "0, 0, 0"
EXTENSION = ".pt"


def _activation_table() -> dict:
    """Activation name -> module class, in the reference's menu order.

    The reference's own names first ("swish" is its name for Hardswish, so plain "hardswish" is hidden, as there),
    then every activation class of ``torch.nn`` that can sit between two linear layers, by lower-cased class
    name - which brings a real "silu" (x * sigmoid(x)) beside the reference's "swish". Left out because they
    cannot work there: MultiheadAttention and Threshold (need constructor arguments), GLU (halves the width), and
    the softmax family (their implicit dimension is the batch axis, so an image's result would depend on the
    other images in the batch).
    """
    table = {"linear": nn.Identity, "relu": nn.ReLU, "leakyrelu": nn.LeakyReLU, "elu": nn.ELU,
             "swish": nn.Hardswish, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    unusable = {"hardswish", "multiheadattention", "threshold", "glu", "softmax", "softmin", "logsoftmax",
                "softmax2d"}
    module = nn.modules.activation
    for class_name in sorted(getattr(module, "__all__", dir(module))):
        cls = getattr(module, class_name, None)
        key = class_name.lower()
        if isinstance(cls, type) and issubclass(cls, nn.Module) and key not in table and key not in unusable:
            table[key] = cls
    return table


ACTIVATIONS = _activation_table()
# Also understood in files (the reference's table has it, though its menu hides it behind "swish").
_ACTIVATION_CLASSES = {**ACTIVATIONS, "hardswish": nn.Hardswish}


class HypernetworkReadError(Exception):
    """A file that cannot be used as a hypernetwork; the message is the reason, for the user."""


# ------------------------------------------------------------------------------------------ the modules


class HypernetworkMLP(nn.Module):
    """One residual MLP: ``x + mlp(x) * multiplier``.

    Layer i is ``Linear(dim * s[i] -> dim * s[i+1])`` for the layer structure s, followed (in this order, and
    only where asked) by the activation (not after the last layer unless `activate_output`), a LayerNorm and a
    Dropout of probability ``dropout[i + 1]``. "linear" adds no activation module at all. The order and the
    absence of no-op modules keep the ``linear.<n>`` indices of the reference's state dicts.
    """

    def __init__(self, dim: int, layer_structure, activation: str = "linear", layer_norm: bool = False,
                 activate_output: bool = False, dropout_structure=None):
        super().__init__()
        layers = []
        last = len(layer_structure) - 2
        for i in range(len(layer_structure) - 1):
            width_out = int(dim * layer_structure[i + 1])
            layers.append(nn.Linear(int(dim * layer_structure[i]), width_out))
            if activation not in (None, "linear") and (i < last or activate_output):
                layers.append(_ACTIVATION_CLASSES[activation]())
            if layer_norm:
                layers.append(nn.LayerNorm(width_out))
            probability = float(dropout_structure[i + 1]) if dropout_structure else 0.0
            if probability > 0:
                layers.append(nn.Dropout(p=probability))
        self.linear = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, multiplier: float = 1.0) -> torch.Tensor:
        return x + self.linear(x) * multiplier

    @torch.no_grad()
    def initialise(self, weight_init: str = "Normal", activation: str = "linear", generator=None):
        """Fresh weights. Linear layers: "Normal" = N(0, 0.01) weights, or Kaiming/Xavier, biases 0.
        LayerNorms start as the identity (weight 1, bias 0) - the reference draws their weights from N(0, 0.01),
        which scales every normalised value down to almost nothing."""
        gain_for = "leaky_relu" if activation == "leakyrelu" else "relu"
        for layer in self.linear:
            if isinstance(layer, nn.LayerNorm):
                nn.init.ones_(layer.weight)
                nn.init.zeros_(layer.bias)
            elif isinstance(layer, nn.Linear):
                if weight_init == "Normal":
                    nn.init.normal_(layer.weight, mean=0.0, std=0.01, generator=generator)
                elif weight_init == "XavierUniform":
                    nn.init.xavier_uniform_(layer.weight, generator=generator)
                elif weight_init == "XavierNormal":
                    nn.init.xavier_normal_(layer.weight, generator=generator)
                elif weight_init == "KaimingUniform":
                    nn.init.kaiming_uniform_(layer.weight, nonlinearity=gain_for, generator=generator)
                elif weight_init == "KaimingNormal":
                    nn.init.kaiming_normal_(layer.weight, nonlinearity=gain_for, generator=generator)
                else:
                    raise UserError(f"Unknown weight initialization {weight_init!r}; choose one of "
                                    f"{', '.join(WEIGHT_INITS)}.")
                nn.init.zeros_(layer.bias)


class Hypernetwork(nn.Module):
    """A named set of (K, V) MLP pairs keyed by context width, plus the reference file's metadata.

    An `nn.Module`, so ``parameters()``, ``train()`` (dropout on), ``eval()`` and ``to()`` work as usual.
    """

    def __init__(self, name: str, sizes, layer_structure=(1, 2, 1), activation: str = "linear",
                 weight_init: str = "Normal", layer_norm: bool = False, use_dropout: bool = False,
                 dropout_structure=None, activate_output: bool = False, optional_info=None, step: int = 0,
                 sd_checkpoint: str | None = None, sd_checkpoint_name: str | None = None):
        super().__init__()
        self.name = name
        self.layer_structure = [float(x) for x in layer_structure]
        self.activation = activation or "linear"
        self.weight_init = weight_init or "Normal"
        self.layer_norm = bool(layer_norm)
        self.use_dropout = bool(use_dropout)
        self.dropout_structure = ([float(x) for x in dropout_structure] if dropout_structure is not None
                                  else [0.0] * len(self.layer_structure))
        self.activate_output = bool(activate_output)
        self.optional_info = optional_info
        self.step = int(step or 0)
        self.sd_checkpoint = sd_checkpoint
        self.sd_checkpoint_name = sd_checkpoint_name
        self.filename: str | None = None
        self.layers = nn.ModuleDict()
        for size in sizes:
            self.layers[str(int(size))] = nn.ModuleList([self._mlp(int(size)), self._mlp(int(size))])
        self.eval()

    def _mlp(self, size: int) -> HypernetworkMLP:
        return HypernetworkMLP(size, self.layer_structure, self.activation, self.layer_norm, self.activate_output,
                               self.dropout_structure)

    @property
    def sizes(self) -> list[int]:
        return [int(key) for key in self.layers]

    def pair(self, width: int):
        """The (K MLP, V MLP) for a context of this width, or None."""
        pair = self.layers[str(width)] if str(width) in self.layers else None
        return (pair[0], pair[1]) if pair is not None else None

    def initialise(self, seed: int | None = None) -> "Hypernetwork":
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        for pair in self.layers.values():
            for mlp in pair:
                mlp.initialise(self.weight_init, self.activation, generator)
        return self

    @property
    def last_layer_dropout(self) -> bool:
        """Whether the layer before the output one drops out (the reference stores it for old readers)."""
        return len(self.dropout_structure) >= 2 and self.dropout_structure[-2] != 0

    def to_reference_dict(self) -> dict:
        """The dict the reference saves with ``torch.save`` (tensors on the CPU)."""
        data = {}
        for key, (k_mlp, v_mlp) in self.layers.items():
            data[int(key)] = (_cpu_state(k_mlp), _cpu_state(v_mlp))
        data.update({
            "step": self.step,
            "name": self.name,
            "layer_structure": list(self.layer_structure),
            "activation_func": self.activation,
            "is_layer_norm": self.layer_norm,
            "weight_initialization": self.weight_init,
            "sd_checkpoint": self.sd_checkpoint,
            "sd_checkpoint_name": self.sd_checkpoint_name,
            "activate_output": self.activate_output,
            "use_dropout": self.use_dropout,
            "dropout_structure": list(self.dropout_structure),
            "last_layer_dropout": self.last_layer_dropout,
            "optional_info": self.optional_info or None,
        })
        return data


def _cpu_state(module: nn.Module) -> collections.OrderedDict:
    return collections.OrderedDict((k, v.detach().to("cpu").clone()) for k, v in module.state_dict().items())


def _format_numbers(values) -> str:
    return ", ".join(f"{v:g}" for v in values)


# ------------------------------------------------------------------------------------------ structure strings


def parse_layer_structure(text) -> list[float]:
    """ "1, 2, 1" -> [1.0, 2.0, 1.0]; first and last must be 1, every entry > 0 (floats allowed: 1, 1.5, 1)."""
    values = _parse_numbers(text, "layer structure", "1, 2, 1")
    if len(values) < 2:
        raise UserError(f'Layer structure "{text}" needs at least two numbers, like "1, 2, 1".')
    if values[0] != 1 or values[-1] != 1:
        raise UserError(f'Layer structure "{text}" must start and end with 1, like "1, 2, 1" or "1, 1.5, 1".')
    if any(v <= 0 for v in values):
        raise UserError(f'Layer structure "{text}" must hold positive numbers only.')
    return values


def parse_dropout_structure(text, layer_structure: list[float], use_dropout: bool) -> list[float]:
    """Dropout probability per entry of the layer structure; all zero unless `use_dropout`.

    With dropout on: one number per layer-structure entry, first and last 0, each in [0, 1); an empty text means
    no dropout anywhere (as in the reference).
    """
    if not use_dropout or text is None or not str(text).strip():
        return [0.0] * len(layer_structure)
    values = _parse_numbers(text, "dropout structure", "0, 0.05, 0")
    if len(values) != len(layer_structure):
        raise UserError(f'Dropout structure "{text}" has {len(values)} numbers but the layer structure has '
                        f"{len(layer_structure)}; give one per layer-structure entry.")
    if values[0] != 0 or values[-1] != 0:
        raise UserError(f'Dropout structure "{text}" must start and end with 0, like "0, 0.05, 0".')
    if any(not 0 <= v < 1 for v in values):
        raise UserError(f'Dropout structure "{text}": every probability must be at least 0 and below 1.')
    return values


def legacy_dropout_structure(layer_structure, use_dropout: bool, last_layer_dropout: bool) -> list[float]:
    """What files written before dropout structures existed meant: 0.3 after every hidden layer but the one
    before the output (that one too with `last_layer_dropout`), never at the ends."""
    n = len(layer_structure)
    if not use_dropout or n < 3:
        return [0.0] * n
    inner = [0.3] * (n - 3) + [0.3 if last_layer_dropout else 0.0]
    return [0.0] + inner + [0.0]


def _parse_numbers(text, what: str, example: str) -> list[float]:
    if isinstance(text, (list, tuple)):
        parts = list(text)
    else:
        parts = [p.strip() for p in str(text or "").split(",")]
        if parts and parts[-1] == "":
            parts = parts[:-1]
    values = []
    for part in parts:
        try:
            value = float(part)
        except (TypeError, ValueError):
            raise UserError(f'Invalid {what} "{text}": "{part}" is not a number; write it like "{example}".') from None
        if value != value or value in (float("inf"), float("-inf")):
            raise UserError(f'Invalid {what} "{text}": {part} is not a usable number.')
        values.append(value)
    if not values:
        raise UserError(f'The {what} is empty; write it like "{example}".')
    return values


def parse_sizes(sizes) -> list[int]:
    """ "768,320" or [768, "320"] -> [768, 320] (order kept, duplicates dropped)."""
    if isinstance(sizes, str):
        sizes = [s for s in re.split(r"[,\s]+", sizes) if s]
    out = []
    for size in sizes or []:
        try:
            value = int(float(size))
        except (TypeError, ValueError):
            raise UserError(f"Module size {size!r} is not a whole number (sizes look like 768, 320, 640, 1280).") from None
        if value <= 0 or value != float(size):
            raise UserError(f"Module size {size!r} must be a positive whole number.")
        if value not in out:
            out.append(value)
    if not out:
        raise UserError("Choose at least one module size for the hypernetwork.")
    return out


# ------------------------------------------------------------------------------------------ model widths


def context_widths(unet) -> list[int]:
    """The context widths of the UNet's attention layers (sorted): its self-attention widths and the text width
    its cross-attention reads. These are the sizes a hypernetwork module can attach to."""
    from diffusers.models.attention_processor import Attention

    widths = {int(m.cross_attention_dim) for m in unet.modules() if isinstance(m, Attention)}
    return sorted(widths)


def default_sizes(model) -> list[int]:
    """The model's text width, then its self-attention widths: 768, 320, 640, 1280 on SD 1.x (the reference's
    default), 1024, 320, 640, 1280 on SD 2.x, 64, 128 on the demo model."""
    text = int(model.text_width)
    return [text] + [w for w in context_widths(model.unet) if w != text]


def size_choices(model) -> list[int]:
    """The reference's menu of sizes plus any width this model uses that it lacks."""
    extra = [w for w in default_sizes(model) if w not in REFERENCE_SIZES]
    return extra + list(REFERENCE_SIZES)


# ------------------------------------------------------------------------------------------ files


def file_short_hash(path) -> str:
    """First 10 hex digits of the file's sha256: what the reference keys a `.optim` file with."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def save_hypernetwork(hypernetwork: Hypernetwork, path) -> Path:
    """Write the reference `.pt` layout atomically, in the container the reference's pickle check accepts."""
    data = hypernetwork.to_reference_dict()
    return atomic_write(path, lambda temp: torch_save_compatible(data, temp))


def save_optimizer_state(path, optimizer_state: dict, optimizer_name: str = "AdamW") -> Path:
    """Write ``{"optimizer_name", "hash": short hash of the .pt file, "optimizer_state_dict"}`` beside `path`
    (call it after the .pt is written: the hash ties the state to exactly that file, as in the reference)."""
    data = {"optimizer_name": optimizer_name, "hash": file_short_hash(path), "optimizer_state_dict": optimizer_state}
    return atomic_write(optimizer_state_path(path), lambda temp: torch_save_compatible(data, temp))


def load_optimizer_state(path, optimizer_name: str = "AdamW") -> dict | None:
    """The optimizer state saved beside `path`, or None when missing, unreadable, for another optimizer, or stale
    (the .pt changed since)."""
    state_path = optimizer_state_path(path)
    if not state_path.is_file():
        return None
    try:
        data = torch.load(state_path, map_location="cpu", weights_only=True)
    except Exception:
        return None
    if not isinstance(data, dict) or data.get("hash") != file_short_hash(path):
        return None
    if data.get("optimizer_name", optimizer_name) != optimizer_name:
        return None
    state = data.get("optimizer_state_dict")
    return state if isinstance(state, dict) else None


_OLD_KEYS = {"linear1.weight": "linear.0.weight", "linear1.bias": "linear.0.bias",
             "linear2.weight": "linear.1.weight", "linear2.bias": "linear.1.bias"}


def hypernetwork_from_data(data, name: str, filename: str | None = None) -> Hypernetwork:
    """Interpret the contents of a hypernetwork file; `HypernetworkReadError` with the reason when it cannot.

    `name` (the file stem, as the reference lists it) wins over the name stored inside."""
    if not isinstance(data, Mapping):
        raise HypernetworkReadError(f"the file holds a {type(data).__name__}, not a hypernetwork dictionary")
    sizes = [key for key in data if isinstance(key, int) and not isinstance(key, bool)]
    if not sizes:
        raise HypernetworkReadError("the file has no hypernetwork modules (integer sizes); is it an embedding?")
    try:
        layer_structure = parse_layer_structure(data.get("layer_structure") or [1, 2, 1])
        activation = data.get("activation_func") or "linear"
        if activation not in _ACTIVATION_CLASSES:
            raise HypernetworkReadError(f"it uses the activation function {activation!r}, which is not supported")
        weight_init = data.get("weight_initialization") or "Normal"
        dropout_structure = data.get("dropout_structure")
        use_dropout = bool(data.get("use_dropout", False))
        if dropout_structure is not None:
            dropout_structure = [float(x) for x in dropout_structure]
            use_dropout = use_dropout or any(dropout_structure)
            if len(dropout_structure) != len(layer_structure):
                raise HypernetworkReadError("its dropout structure does not match its layer structure")
        else:
            dropout_structure = legacy_dropout_structure(layer_structure, use_dropout,
                                                         bool(data.get("last_layer_dropout", False)))
    except UserError as e:
        raise HypernetworkReadError(str(e).rstrip(".")) from None
    except (TypeError, ValueError) as e:
        raise HypernetworkReadError(f"its settings cannot be read ({e})") from None
    hypernetwork = Hypernetwork(
        name=name, sizes=sizes, layer_structure=layer_structure, activation=activation,
        weight_init=weight_init, layer_norm=bool(data.get("is_layer_norm", False)), use_dropout=use_dropout,
        dropout_structure=dropout_structure, activate_output=bool(data.get("activate_output", True)),
        optional_info=data.get("optional_info"), step=_int_or_zero(data.get("step")),
        sd_checkpoint=_optional_str(data.get("sd_checkpoint")),
        sd_checkpoint_name=_optional_str(data.get("sd_checkpoint_name")),
    )
    for size in sizes:
        pair = data[size]
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or not all(isinstance(s, Mapping) for s in pair):
            raise HypernetworkReadError(f"module {size} is not a pair of state dicts")
        for mlp, state in zip(hypernetwork.pair(size), pair):
            state = {_OLD_KEYS.get(k, k): v for k, v in state.items()}
            try:
                mlp.load_state_dict(state, strict=True)
            except RuntimeError as e:
                first = " ".join(line.strip() for line in str(e).strip().splitlines()[1:2])[:200]
                raise HypernetworkReadError(f"module {size} does not match its layer structure ({first})") from None
            if not all(torch.isfinite(p).all() for p in mlp.parameters()):
                raise HypernetworkReadError(f"module {size} contains NaN or infinite weights")
    hypernetwork.filename = filename
    hypernetwork.eval()
    return hypernetwork


def read_hypernetwork(path) -> Hypernetwork:
    """Read a hypernetwork `.pt` (weights-only); the name is the file stem. Raises `HypernetworkReadError`."""
    path = Path(path)
    try:
        data = load_weights_only(path)
    except EmbeddingReadError as e:
        raise HypernetworkReadError(str(e)) from None
    return hypernetwork_from_data(data, path.stem, str(path))


def _int_or_zero(value) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    try:
        return int(value) if value is not None and not isinstance(value, bool) else 0
    except (TypeError, ValueError):
        return 0


def _optional_str(value):
    return None if value is None else str(value)


# ------------------------------------------------------------------------------------------ create


def create_hypernetwork(name: str, sizes, layer_structure=DEFAULT_LAYER_STRUCTURE, activation: str = "linear",
                        weight_init: str = "Normal", layer_norm: bool = False, use_dropout: bool = False,
                        dropout_structure=DEFAULT_DROPOUT_STRUCTURE, overwrite: bool = False,
                        hypernetwork_dir="models/hypernetworks", checkpoint_hash: str | None = None,
                        checkpoint_name: str | None = None, seed: int | None = None) -> Path:
    """Create ``<hypernetwork_dir>/<clean name>.pt`` at step 0 (the Create hypernetwork tab); returns its path.

    Refused with `UserError`: an empty name, no sizes, a bad layer or dropout structure, an unknown activation
    or initialisation, and an existing file unless `overwrite`.
    """
    clean = clean_embedding_name(name)
    if not any(ch.isalnum() for ch in clean):
        raise UserError("Please enter a name for the hypernetwork: letters, digits, spaces and . _ - are allowed.")
    check_name_length(clean, "hypernetwork")
    if Path(hypernetwork_dir).exists() and not Path(hypernetwork_dir).is_dir():
        raise UserError(f"The hypernetworks folder {hypernetwork_dir} is a file, not a folder.")
    sizes = parse_sizes(sizes)
    structure = parse_layer_structure(layer_structure)
    activation = (activation or "linear").strip().lower()
    if activation not in ACTIVATIONS:
        raise UserError(f"Unknown activation function {activation!r}; choose one of {', '.join(ACTIVATIONS)}.")
    if weight_init not in WEIGHT_INITS:
        raise UserError(f"Unknown weight initialization {weight_init!r}; choose one of {', '.join(WEIGHT_INITS)}.")
    dropout = parse_dropout_structure(dropout_structure, structure, bool(use_dropout))
    too_small = [s for s in sizes if any(int(s * f) < 1 for f in structure)]
    if too_small:
        raise UserError(f"Layer structure {_format_numbers(structure)} leaves no units for module size {too_small[0]}.")
    existing = list_hypernetworks(hypernetwork_dir).get(clean)  # anywhere under the folder: a name exists once
    path = existing or Path(hypernetwork_dir) / f"{clean}{EXTENSION}"
    if existing is not None and not overwrite:
        raise UserError(f"A hypernetwork named '{clean}' already exists ({path}).", control="overwrite")
    refuse_if_locked(hypernetwork_dir, clean, "hypernetwork", "overwritten")
    hypernetwork = Hypernetwork(clean, sizes, structure, activation, weight_init, layer_norm, bool(use_dropout),
                                dropout, activate_output=False, sd_checkpoint=checkpoint_hash,
                                sd_checkpoint_name=checkpoint_name).initialise(seed)
    save_hypernetwork(hypernetwork, path)
    return path


# ------------------------------------------------------------------------------------------ the folder


def list_hypernetworks(folder) -> dict[str, Path]:
    """name -> path of every ``*.pt`` under `folder` (recursively), sorted by lower-cased name, as the reference
    lists them ("None" is never a name). Files are not opened here."""
    root = Path(folder)
    found = {}
    if not root.is_dir():
        return found
    for path in walk_files(root):
        if path.suffix.lower() == EXTENSION and path.stem != "None" and not path.name.startswith("."):
            found.setdefault(path.stem, path)
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


class HypernetworkFolder(Mapping):
    """The hypernetworks folder as a read-only mapping name -> `Hypernetwork`, loaded on first use and reloaded
    when the file changes. A missing or unreadable one raises `UserError` with the reason."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self._cache: dict[str, tuple[tuple, Hypernetwork]] = {}

    def paths(self) -> dict[str, Path]:
        return list_hypernetworks(self.folder)

    def __getitem__(self, name: str) -> Hypernetwork:
        path = self.paths().get(name)
        if path is None:
            raise KeyError(name)
        stat = path.stat()
        stamp = (str(path), stat.st_mtime_ns, stat.st_size)
        cached = self._cache.get(name)
        if cached is not None and cached[0] == stamp:
            return cached[1]
        try:
            hypernetwork = read_hypernetwork(path)
        except HypernetworkReadError as e:
            raise UserError(f"Hypernetwork file {path} cannot be used: {e}.") from None
        self._cache[name] = (stamp, hypernetwork)
        return hypernetwork

    def __iter__(self):
        return iter(self.paths())

    def __len__(self) -> int:
        return len(self.paths())

    def __contains__(self, name) -> bool:
        return name in self.paths()


__all__ = [
    "ACTIVATIONS", "DEFAULT_DROPOUT_STRUCTURE", "DEFAULT_LAYER_STRUCTURE", "Hypernetwork", "HypernetworkFolder",
    "HypernetworkMLP", "HypernetworkReadError", "REFERENCE_SIZES", "WEIGHT_INITS",
    "context_widths", "create_hypernetwork", "default_sizes", "file_short_hash", "hypernetwork_from_data",
    "legacy_dropout_structure", "list_hypernetworks", "load_optimizer_state", "optimizer_state_path",
    "parse_dropout_structure", "parse_layer_structure",
    "parse_sizes", "read_hypernetwork", "save_hypernetwork", "save_optimizer_state", "size_choices",
]
