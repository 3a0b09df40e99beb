"""Does the validation loss track what the previews show? The demo model that knows a toy world (issue 11),
judged by the toy-world judge (OpenCV, no learned weights).

    python bench/validation_vs_previews.py [--concept "orange circle on a blue background"] [--steps 400]
                                           [--every 25] [--previews 8] [--learn-rate 0.005] [--seed 0]

An embedding created from "*" (1 vector) is trained on 20 pictures of the concept at the model's native size
(batch 1, subject.txt), validating and saving a copy every `--every` steps. Each copy (and the step-0
vectors) then renders `--previews` seeded previews of "a picture of <name>", and the judge says which show the
concept. Prints, per checked step, the validation loss, the training loss around it and the preview hit rate;
then the Spearman rank correlation of validation loss with hit rate (negative = lower loss, better pictures),
the step of the lowest validation loss and the hit rate there beside the best hit rate of the run; the same
for the part score (share of shape, colour and background right: partial credit).

Needs trainer.toy (world, judge, eval) and the pretrained demo weights.
"""
import argparse
import csv
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from trainer.embeddings.library import create_embedding, read_embedding_file  # noqa: E402
from trainer.models.loading import load_model  # noqa: E402
from trainer.training.textual_inversion import train_embedding  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402


def ranks(values: list) -> list:
    order = sorted(range(len(values)), key=lambda i: values[i])
    result = [0.0] * len(values)
    i = 0
    while i < len(order):  # ties share their mean rank
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            result[order[k]] = (i + j) / 2
        i = j + 1
    return result


def spearman(a: list, b: list) -> float:
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
    return cov / var if var else float("nan")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concept", default="orange circle on a blue background")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--every", type=int, default=25)
    parser.add_argument("--previews", type=int, default=8)
    parser.add_argument("--learn-rate", default="0.005")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    try:
        from trainer.toy.eval import render_and_judge
        from trainer.toy.world import parse_concept, write_dataset
    except ImportError:
        sys.exit("This measurement needs the toy world and the world-knowing demo model (issue 11).")

    model = load_model("demo", "models/Stable-diffusion", "cpu")
    concept = parse_concept(args.concept)
    size = model.native_size
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_dataset(work / "data", concept, count=20, seed=args.seed, size=size)
        name = "toyconcept"
        create_embedding(model.tokenizer, model.text_encoder, name, init_text="*", num_vectors=1,
                         embeddings_dir=work / "emb", checkpoint_hash=model.checkpoint_hash, checkpoint_name=model.name)
        initial = read_embedding_file(work / "emb" / f"{name}.pt").vectors
        cfg = TrainConfig(name=name, dataset=str(work / "data"), log_dir=str(work / "logs"), template="subject.txt",
                          learn_rate=args.learn_rate, width=size, height=size, steps=args.steps,
                          save_every=args.every, preview_every=0, save_optimizer_state=False, seed=args.seed,
                          validate_every=args.every)
        result = train_embedding(model, cfg, work / "emb", ROOT / "textual_inversion_templates")
        [logs] = list((work / "logs").glob(f"*/{name}"))
        checks = list(csv.DictReader(open(logs / "validation.csv")))
        losses = {int(r["step"]): float(r["loss"]) for r in csv.DictReader(open(logs / "textual_inversion_loss.csv"))}
        seeds = [1000 + i for i in range(args.previews)]
        print(f"{result.message}\nconcept: {args.concept}; {args.previews} previews per check, model {model.name} "
              f"{size}px")
        print(f"{'step':>6} {'val_loss':>10} {'train_loss':>10} {'hit_rate':>8} {'parts':>6}", flush=True)
        table = []
        for row in checks:
            step = int(row["step"])
            vectors = initial if step == 0 else read_embedding_file(logs / "embeddings" / f"{name}-{step}.pt").vectors
            rendered = render_and_judge(model, [f"a picture of {name}"] * args.previews, seeds,
                                        [concept] * args.previews, {name: vectors})
            near = [losses[s] for s in range(max(1, step - args.every + 1), step + 1) if s in losses]
            # partial credit: the share of (shape, colour, background) the previews get right, where the concept
            # names them (the learning shows here before whole pictures are right)
            wanted = [part for part in ("shape", "colour", "background") if getattr(concept, part) is not None]
            parts = sum(getattr(r.verdict, part) == getattr(concept, part) for r in rendered for part in wanted)
            table.append((step, float(row["val_loss"]), sum(near) / len(near) if near else float("nan"),
                          sum(r.hit for r in rendered) / len(rendered), parts / (len(rendered) * len(wanted))))
            print("{:>6} {:>10.6f} {:>10.6f} {:>8.2f} {:>6.2f}".format(*table[-1]), flush=True)
    steps, vals, trains, hits, part_rates = zip(*table)
    best = min(range(len(table)), key=lambda i: vals[i])
    print(f"Spearman(val_loss, hit_rate) = {spearman(list(vals), list(hits)):+.3f}; "
          f"Spearman(train_loss over the interval, hit_rate) = {spearman(list(trains[1:]), list(hits[1:])):+.3f}")
    print(f"Spearman(val_loss, part score) = {spearman(list(vals), list(part_rates)):+.3f}; lowest validation loss "
          f"at step {steps[best]} has part score {part_rates[best]:.2f}, the run's best part score is "
          f"{max(part_rates):.2f} (first at step {steps[part_rates.index(max(part_rates))]})")
    print(f"lowest validation loss at step {steps[best]} (hit rate {hits[best]:.2f}); best hit rate {max(hits):.2f} "
          f"first at step {steps[hits.index(max(hits))]}")


if __name__ == "__main__":
    main()
