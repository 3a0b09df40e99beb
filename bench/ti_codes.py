"""Where does a trained textual-inversion word land among the demo's one-word codes? (No previews: about 1.5 min.)

    python bench/ti_codes.py [--demo-weights FILE] [--concept "orange circle on a blue background"] [--runs 4]

Stage 3 of scripts/pretrain_demo.py teaches the demo one-word codes: a code is the sum of a fixed random direction
for the scene's shape, one for its colour and one for its background (the code book, rebuilt here from the
weights' metadata). This trains the benchmark's word as bench/ti_learning.py does (from "*", 400 steps, learning
rate 0.005, batch 1; seeds --seed, --seed + 1, ...) and splits each trained vector into the book's directions
(least squares) and what is left off the book. It prints:
- how far the vector moved, and how far it lies off the span of the book (a code's own size is about 0.3 at the
  default spread): a word that ends far off the book is drawn by the model's guesses, not by what it was taught;
- its weight on each shape, colour and background direction, largest first: the concept's parts should lead.
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from safetensors import safe_open  # noqa: E402

import pretrain_demo as P  # noqa: E402
from trainer.embeddings.library import load_embeddings_dir  # noqa: E402
from trainer.models.demo import DEMO_WEIGHTS  # noqa: E402
from trainer.models.loading import load_model  # noqa: E402
from trainer.toy.eval import learn_concept  # noqa: E402
from trainer.toy.world import parse_concept  # noqa: E402


def split(vector: torch.Tensor, names: list[str], directions: torch.Tensor) -> tuple[dict, float]:
    """The vector's weights on the book's directions (least squares) and the length of what they leave over."""
    v = vector.double()
    weights = torch.linalg.lstsq(directions.T, v[:, None]).solution[:, 0]
    left = (v - directions.T @ weights).norm().item()
    return dict(zip(names, weights.tolist())), left


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-weights", type=Path, default=DEMO_WEIGHTS)
    parser.add_argument("--concept", default="orange circle on a blue background")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    with safe_open(str(args.demo_weights), "pt") as f:
        meta = f.metadata() or {}
    if "code_spread" not in meta:
        parser.error(f"{args.demo_weights} has no stage 3 (no code_spread in its metadata)")
    book = P.code_book(int(meta["seed"]) + 4, float(meta["code_spread"]))  # as pretrain_demo.py's main builds it
    names, directions = P.book_directions(book)
    model = load_model("demo", demo_weights=args.demo_weights)
    star_id = model.tokenizer("*", add_special_tokens=False).input_ids[0]
    star = model.text_encoder.get_input_embeddings().weight[star_id].detach()
    _, star_off = split(star, names, directions)
    print(f"demo [{model.checkpoint_hash}]: code book of {len(names)} directions, spread {meta['code_spread']}; "
          f"'*' has length {star.norm():.3f}, {star_off:.3f} of it off the book")
    concept = parse_concept(args.concept)
    for seed in range(args.seed, args.seed + args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            learn_concept(model, concept, Path(tmp), ROOT / "textual_inversion_templates", steps=args.steps,
                          previews=0, seed=seed)
            vector = load_embeddings_dir(Path(tmp) / "embeddings", model.text_width)[0]["toyconcept"].vectors[0]
        weights, off = split(vector, names, directions)
        print(f"run with seed {seed}: length {vector.norm():.3f}, moved {(vector - star).norm():.3f} from '*', "
              f"{off:.3f} off the book")
        for part in ("shape", "colour", "background"):
            ranked = sorted(((n.split(":")[1], w) for n, w in weights.items() if n.startswith(part + ":")),
                            key=lambda item: -item[1])
            print(f"  {part}: " + ", ".join(f"{value} {w:+.2f}" for value, w in ranked))


if __name__ == "__main__":
    main()
