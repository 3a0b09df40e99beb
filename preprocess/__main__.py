"""`python -m preprocess --src S --dst D [...]`: the "Preprocess images" tab, headless.

Progress goes to stderr (tqdm), the summary to stdout. Bad input is one line on stderr and exit code 2;
Ctrl-C once lets the current image finish and stops (exit 130), twice stops at once.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

from common.cpu_env import add_threads_argument, apply_cpu_defaults, set_threads

apply_cpu_defaults()  # passive OpenMP waits, huge-page allocations: before the steps below import torch
from common import events  # noqa: E402
from common.errors import UserError, with_hint  # noqa: E402

from .autosize import OBJECTIVES
from .caption import CAPTION_ACTIONS  # noqa: E402
from .pipeline import PreprocessConfig, run_preprocess  # noqa: E402

PROG = "python -m preprocess"
CLI_HINTS = {"blip_model": "Or pass its folder with --blip-model."}


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line and exit code 2."""

    def error(self, message: str):  # noqa: D401 - argparse API
        self.exit(2, f"{PROG}: error: {message} (see --help).\n")


def build_parser() -> argparse.ArgumentParser:
    d = PreprocessConfig()
    p = _OneLineParser(prog=PROG, description="Prepare a folder of images for textual-inversion or "
                       "hypernetwork training (the Train tab's \"Preprocess images\").")
    p.add_argument("--src", required=True, help="Source directory")
    p.add_argument("--dst", required=True, help="Destination directory (created)")
    p.add_argument("--width", type=int, default=d.width, help="Width (64-2048, default %(default)s)")
    p.add_argument("--height", type=int, default=d.height, help="Height (64-2048, default %(default)s)")
    p.add_argument("--caption-action", choices=CAPTION_ACTIONS, default=d.caption_action,
                   help="Existing caption txt action (default %(default)s)")
    p.add_argument("--keep-original-size", action="store_true", help="Keep original size")
    p.add_argument("--flip", action="store_true", help="Create flipped copies")
    p.add_argument("--overwrite", action="store_true",
                   help="number outputs from 0 and replace earlier ones in DST (default: number on after them)")

    g = p.add_argument_group("Split oversized images")
    g.add_argument("--split", action="store_true", help="Split oversized images")
    g.add_argument("--split-threshold", type=float, default=d.split_threshold, help="default %(default)s")
    g.add_argument("--overlap-ratio", type=float, default=d.overlap_ratio, help="default %(default)s")

    g = p.add_argument_group("Auto focal point crop")
    g.add_argument("--focal-crop", action="store_true", help="Auto focal point crop")
    g.add_argument("--face-weight", type=float, default=d.face_weight, help="default %(default)s")
    g.add_argument("--entropy-weight", type=float, default=d.entropy_weight, help="default %(default)s")
    g.add_argument("--edges-weight", type=float, default=d.edges_weight, help="default %(default)s")
    g.add_argument("--focal-debug", action="store_true", help="Create debug image (in DST/focal-debug)")
    g.add_argument("--yunet-model", default=None,
                   help="YuNet face model (.onnx); default: models/opencv/face_detection_yunet*.onnx if present, "
                        "else OpenCV Haar cascades")

    g = p.add_argument_group("Auto-sized crop")
    g.add_argument("--autosize", action="store_true", help="Auto-sized crop")
    g.add_argument("--min-dim", type=int, default=d.min_dim, help="Dimension lower bound (default %(default)s)")
    g.add_argument("--max-dim", type=int, default=d.max_dim, help="Dimension upper bound (default %(default)s)")
    g.add_argument("--min-area", type=int, default=d.min_area, help="Area lower bound (default %(default)s)")
    g.add_argument("--max-area", type=int, default=d.max_area, help="Area upper bound (default %(default)s)")
    g.add_argument("--objective", choices=OBJECTIVES, default=d.objective, help="default %(default)r")
    g.add_argument("--error-threshold", type=float, default=d.error_threshold, help="default %(default)s")

    g = p.add_argument_group("Captions")
    g.add_argument("--caption", choices=("blip",), default="", help="Use BLIP for caption")
    g.add_argument("--blip-model", default=None,
                   help="transformers BLIP captioning folder (default models/BLIP, else the HF cache)")
    g.add_argument("--beams", type=int, default=d.beams, help="BLIP beams (default %(default)s)")
    g.add_argument("--min-length", type=int, default=d.min_length, help="BLIP min length (default %(default)s)")
    g.add_argument("--max-length", type=int, default=d.max_length, help="BLIP max length (default %(default)s)")
    g.add_argument("--device", default=None, help="Device for BLIP (default: cuda if available, else cpu)")
    p.add_argument("--data-dir", default=None,
                   help="the folder models/BLIP and models/opencv are looked for in when --blip-model or "
                        "--yunet-model is not given (default: $TI_TRAINER_DATA_DIR, else the current folder)")
    add_threads_argument(p)
    return p


def config_from_args(args: argparse.Namespace) -> PreprocessConfig:
    from common.folders import Folders

    fields = PreprocessConfig.__dataclass_fields__
    values = {name: value for name, value in vars(args).items() if name in fields}
    data_dir = Folders.under(getattr(args, "data_dir", None)).data_dir  # the app's and trainer's data folder
    if data_dir != Path.cwd().resolve():  # BLIP is looked for (and named when missing) in the data folder
        values["blip_default_dir"] = data_dir / "models" / "BLIP"
    if not values.get("yunet_model"):
        from .focal import find_yunet_model

        values["yunet_model"] = find_yunet_model(data_dir / "models" / "opencv")
    return PreprocessConfig(**values)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # our own bar is the only one

    stop = {"requested": False}

    def on_interrupt(signum, frame):
        if stop["requested"]:
            raise KeyboardInterrupt
        stop["requested"] = True
        print(f"\n{PROG}: stopping after the current image (Ctrl-C again to stop now).", file=sys.stderr)

    bar = {"tqdm": None}

    def progress(event: events.Progress) -> None:
        from tqdm import tqdm

        if bar["tqdm"] is None:
            bar["tqdm"] = tqdm(total=event.total, file=sys.stderr, unit="file", desc="Preprocessing")
        tq = bar["tqdm"]
        tq.update(event.done - tq.n)

    in_main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGINT, signal.SIGTERM)  # SIGTERM (kill, systemd, Docker) stops like Ctrl-C
    previous = {sig: signal.signal(sig, on_interrupt) for sig in signals} if in_main_thread else {}
    try:
        set_threads(args.threads)
        result = run_preprocess(config, progress=progress, should_stop=lambda: stop["requested"])
    except UserError as exc:
        _close(bar)
        print(f"{PROG}: error: {with_hint(exc, CLI_HINTS)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        _close(bar)
        print(f"{PROG}: stopped.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - never a traceback for the user
        _close(bar)
        text = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        print(f"{PROG}: unexpected error: {type(exc).__name__}: {text}", file=sys.stderr)
        return 1
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    _close(bar)

    for skipped in result.skipped:
        print(f"skipped {skipped.name}: {skipped.reason}", file=sys.stderr)
    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(result.summary)
    return 130 if result.interrupted else 0


def _close(bar: dict) -> None:
    if bar["tqdm"] is not None:
        bar["tqdm"].close()
        bar["tqdm"] = None


if __name__ == "__main__":
    sys.exit(main())
