"""What validation costs: the real training loop with validation off and on, side by side in one run.

    python bench/validation_cost.py [--steps 30] [--every 10] [--rounds 3] [--configs demo,mid] [--default-every 100]

For each model config (the demo model at 512 px, and bench/train_speed.py's mid-size SD-shaped model at 256 px,
batch 1: the cheapest steps, so the worst case for the ratio) it trains `--steps` steps twice per round, once
with `validate_every=0` and once with `validate_every=--every` (checks at step 0 and every N after, each on the
fixed set of trainer.training.validation.SET_ITEMS items), alternating so that machine noise hits both alike.

It prints seconds per step without validation, seconds per check (measured inside the loop, and as the
difference between the two runs' wall times per extra check), and the cost at the default interval:
check time / (default interval x step time), the share of training time validation adds.
"""
import argparse
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from train_speed import make_dataset, mid_model  # noqa: E402
from common import events  # noqa: E402
from trainer.embeddings.library import create_embedding  # noqa: E402
from trainer.models.loading import load_model  # noqa: E402
from trainer.training.textual_inversion import train_embedding  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402
from trainer.training.validation import SET_ITEMS  # noqa: E402


def run(model, workdir: Path, size: int, steps: int, every: int) -> dict:
    """Wall seconds from the first step's start to the end, and the seconds of each check, of one real run."""
    name = f"bench{random.randrange(10**9)}"
    create_embedding(model.tokenizer, model.text_encoder, name, init_text="photo", num_vectors=4,
                     embeddings_dir=workdir / "emb", checkpoint_hash=model.checkpoint_hash, checkpoint_name=model.name)
    marks, checks = {}, []

    def progress(event):
        if isinstance(event, events.Started):
            marks["start"] = time.perf_counter()
        elif isinstance(event, events.Validated):
            checks.append(event.seconds)
        elif isinstance(event, events.Ended):
            marks["end"] = time.perf_counter()

    cfg = TrainConfig(name=name, dataset=str(workdir / "data"), log_dir=str(workdir / "logs"), width=size,
                      height=size, steps=steps, save_every=0, preview_every=0, template="subject_filewords.txt",
                      save_optimizer_state=False, seed=0, validate_every=every)
    train_embedding(model, cfg, workdir / "emb", Path(__file__).resolve().parent.parent / "textual_inversion_templates",
                    progress=progress)
    return {"wall": marks["end"] - marks["start"], "checks": checks}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--every", type=int, default=10, help="validation interval of the measured runs")
    parser.add_argument("--default-every", type=int, default=TrainConfig.validate_every,
                        help="the interval whose cost is reported (default: the app's default)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="demo,mid")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
          f"{SET_ITEMS} items per check; runs of {args.steps} steps, validating every {args.every}")
    for config in args.configs.split(","):
        model, size = (load_model("demo"), 512) if config == "demo" else (mid_model(), 256)
        off, on = [], []
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            make_dataset(work / "data", size)
            run(model, work, size, 3, 0)  # warm-up
            for _ in range(args.rounds):
                off.append(run(model, work, size, args.steps, 0))
                on.append(run(model, work, size, args.steps, args.every))
        step = min(r["wall"] for r in off) / args.steps  # noise only ever adds time: best round
        check = statistics.median(c for r in on for c in r["checks"])
        n_checks = len(on[0]["checks"])
        by_wall = (min(r["wall"] for r in on) - min(r["wall"] for r in off)) / n_checks
        cost = check / (args.default_every * step)
        cost_wall = by_wall / (args.default_every * step)
        print(f"{config:>5} {size}px batch 1: {step:.4f} s/step without validation; a check takes {check:.4f} s "
              f"({check / step:.2f} steps) in the loop, {by_wall:.4f} s by wall-time difference "
              f"({n_checks} checks per run); every {args.default_every} steps it adds {100 * cost:.2f} % "
              f"({100 * cost_wall:.2f} % by wall time) to training time")


if __name__ == "__main__":
    main()
