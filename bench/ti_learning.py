"""Does textual inversion teach the demo model a new word? Measured by the toy-world judge (no learned weights).

    python bench/ti_learning.py [--concept "orange circle on a blue background"] [--steps 400] [--previews 16]
                                [--runs 4] [--world 64] [--cfg-scale 7] [--learn-rate 0.005]
                                [--out bench/results] [--demo-weights FILE] [--device cuda]

1. World score: txt2img of `--world` world prompts ("a yellow star on a purple background", seeded), judged;
   the share that shows exactly what was asked (target >= 60 %).
2. Learning: an embedding created from "*" (1 vector) is trained with the Train tab's defaults (learning rate
   0.005, batch 1, no previews) and the subject.txt template, at the model's native size, for `--steps` steps
   on 20 images of the concept; 16 seeded previews of "a picture of <name>" are judged before and after
   (targets: <= 25 % before, >= 75 % after). One training run is one draw of the dataset, the training noise
   and the preview seeds, and on the demo the outcome of a single run swings widely with them (seeds 0, 1, 2
   of the shipped weights: 50 %, 100 %, 31 %), so `--runs` runs (seeds --seed, --seed + 1, ...) are made and
   their previews pooled. Prints training steps/s and the whole run's time (target <= 10 min).
Writes world.png (prompt grid) and concept.png (dataset row, then each run's previews before and after) to --out.
"""
import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common.errors import UserError  # noqa: E402
from trainer.models.loading import load_model  # noqa: E402
from trainer.training.schedule import parse_schedule  # noqa: E402
from trainer.toy.eval import grid, learn_concept, world_prompts, world_score  # noqa: E402
from trainer.toy.world import parse_concept  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="orange circle on a blue background")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--previews", type=int, default=16)
    parser.add_argument("--runs", type=int, default=4, help="training runs, each with its own seed, pooled")
    parser.add_argument("--world", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--learn-rate", default="0.005", help="the Embedding Learning rate, or a schedule such as "
                                                              "\"0.005:200, 0.001\" (the Train tab's default: 0.005)")
    parser.add_argument("--cfg-scale", type=float, default=7.0, help="of the world prompts and the previews "
                                                                     "(7: the reference's default)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--demo-weights", default=None, help="another demo weights file (default: the shipped one)")
    parser.add_argument("--device", default="cpu", help="where to run (cuda: fp16 training, the app's GPU default)")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    try:
        parse_schedule(args.learn_rate, args.steps)
    except UserError as error:
        parser.error(str(error))
    started = time.perf_counter()
    concept = parse_concept(args.concept)
    model = load_model("demo", demo_weights=args.demo_weights, device=args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; demo [{model.checkpoint_hash}] "
          f"native size {model.native_size}px")
    args.out.mkdir(parents=True, exist_ok=True)

    if args.world > 0:  # --world 0: the learning part alone
        scenes = world_prompts(args.world)
        world = world_score(model, scenes, cfg_scale=args.cfg_scale)
        parts = world.part_scores(scenes)
        print(f"world score: {world.score:.0%} of {args.world} world prompts drawn exactly as asked "
              f"(shape {parts['shape']:.0%}, colour {parts['colour']:.0%}, background {parts['background']:.0%})")
        for r in world.rendered:
            print(f"  {'ok ' if r.hit else 'no '} {r.prompt!r} -> {r.verdict.describe()}")
        grid([r.image for r in world.rendered], 8).save(args.out / "world.png")

    runs, dataset_images = [], []
    for seed in range(args.seed, args.seed + args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            run = learn_concept(model, concept, Path(tmp), ROOT / "textual_inversion_templates", steps=args.steps,
                                previews=args.previews, seed=seed, cfg_scale=args.cfg_scale,
                                learn_rate=args.learn_rate)
            if not dataset_images:
                files = sorted((Path(tmp) / "dataset").glob("*.png"))
                dataset_images = [Image.open(p).convert("RGB") for p in files]
        runs.append(run)
        print(f"run with seed {seed}: before {run.before_rate:.0%}, after {run.after_rate:.0%} "
              f"({run.steps_per_second:.2f} steps/s at {model.native_size}px batch 1)")
        for when in ("before", "after"):
            rates = run.part_rates(concept, when)
            print(f"  {when}: " + ", ".join(f"{part} right in {rate:.0%}" for part, rate in rates.items()))
            print(f"  {when}: " + ", ".join(r.verdict.describe() for r in getattr(run, when)))
    columns = max(8, min(16, args.previews))
    sheet = dataset_images[:columns] + [r.image for run in runs for r in [*run.before, *run.after]]
    grid(sheet, columns, cell=96).save(args.out / "concept.png")
    before = [r.hit for run in runs for r in run.before]
    after = [r.hit for run in runs for r in run.after]
    print(f"concept {concept.describe()!r}: before {sum(before) / len(before):.0%} of {len(before)} previews, "
          f"after {sum(after) / len(after):.0%} ({len(runs)} runs of {args.steps} steps; per run "
          + ", ".join(f"{run.after_rate:.0%}" for run in runs) + ")")
    total = time.perf_counter() - started
    pictures = [args.out / name for name in (["world.png"] if args.world > 0 else []) + ["concept.png"]]
    print(f"total {total / 60:.1f} min; pictures: {', '.join(map(str, pictures))} "
          f"(concept.png rows: training images, then each run's previews before and after)")


if __name__ == "__main__":
    main()
