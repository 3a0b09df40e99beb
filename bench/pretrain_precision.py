"""What bfloat16 autocast would save in the demo's pretraining: one stage-2 step in float32 vs under bfloat16 autocast,
side by side in one run.

    python bench/pretrain_precision.py [--batch 64] [--steps 5] [--rounds 3] [--threads 2]

A step is what scripts/pretrain_demo.py's `train_denoiser` does at the shipped settings: the text encoder on 64
captions, the UNet forward and backward on 64 noisy 16x16 latents (128 px pictures), gradient clipping and an
AdamW step. Rounds alternate float32 / bfloat16 so that machine noise hits both alike; the best round of each is
compared (noise only ever adds time). It also prints how far the bfloat16 UNet's prediction lies from the float32
one on the same inputs (relative RMS), the price in accuracy. On CPUs with AMX or AVX-512 BF16 the matrix work runs
in bfloat16 natively; elsewhere autocast may be slower than float32.
"""
import argparse
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain_demo as P  # noqa: E402
from trainer.models.demo import NATIVE_SIZE, build_demo_modules  # noqa: E402
from trainer.models.tokenizers import load_tokenizer  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="steps per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    modules = build_demo_modules(0)
    unet, text_encoder = modules["unet"].train(), modules["text_encoder"].train()
    tokenizer = load_tokenizer()
    parameters = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(parameters, lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    size = NATIVE_SIZE // 8
    latents = torch.randn(args.batch, 4, size, size, generator=generator)
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = torch.randint(0, 1000, (args.batch,), generator=generator)
    captions = ["a red circle on a blue background"] * args.batch

    def precision(name: str):
        return torch.autocast("cpu", dtype=torch.bfloat16) if name == "bfloat16" else nullcontext()

    def step(name: str):
        with precision(name):
            context = P.encode_captions(text_encoder, tokenizer, captions, None)
            prediction = unet(latents, timesteps, encoder_hidden_states=context).sample
        loss = F.mse_loss(prediction.float(), noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()

    with torch.no_grad():
        predictions = {}
        for name in ("float32", "bfloat16"):
            with precision(name):
                context = P.encode_captions(text_encoder, tokenizer, captions[:8], None)
                predictions[name] = unet(latents[:8], timesteps[:8], encoder_hidden_states=context).sample.float()
    error = ((predictions["bfloat16"] - predictions["float32"]).pow(2).mean()
             / predictions["float32"].pow(2).mean()).sqrt().item()

    times = {"float32": [], "bfloat16": []}
    for name in times:  # one step each first: allocator and kernel warm-up
        step(name)
    for _ in range(args.rounds):
        for name in times:
            started = time.perf_counter()
            for _ in range(args.steps):
                step(name)
            times[name].append((time.perf_counter() - started) / args.steps)
    best = {name: min(t) for name, t in times.items()}
    print(f"torch {torch.__version__}, {args.threads} threads, batch {args.batch}, {NATIVE_SIZE} px "
          f"({args.rounds} rounds of {args.steps} steps, alternating)")
    for name, seconds in best.items():
        print(f"  {name:9s} {seconds:.3f} s/step (best round), {1 / seconds:.2f} steps/s; rounds: "
              + ", ".join(f"{t:.3f}" for t in times[name]))
    print(f"bfloat16 autocast / float32 step time: {best['bfloat16'] / best['float32']:.2f}x; "
          f"its UNet prediction differs by {error:.2%} (relative RMS)")


if __name__ == "__main__":
    main()
