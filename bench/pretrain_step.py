"""How fast is one pretraining step of the demo model here, and does any CPU trick make it faster?

    python bench/pretrain_step.py [--batch 64] [--steps 15] [--compile]

The core of one step of scripts/pretrain_demo.py's stage 2 (`train_denoiser`) on the demo's own modules
(trainer/models/demo.py): text encoder and UNet forward on a batch of 16 x 16 latents (the 128-pixel native size)
with 77-token captions, epsilon loss, backward, AdamW. It leaves out what the script's step adds around that core
(tokenizing the captions, the per-timestep loss weights, gradient clipping), so its rate is a little above the
script's; the ratios between modes are what it is for. Measured side by side in one run, each after 3 warm-up steps: plain float32; the UNet in
channels_last; bfloat16 autocast (AMX on CPUs that have it); and with --compile, torch.compile of the forward
pass (minutes of compiling first). Prints steps/s and each one's ratio to plain float32: the pretraining's
length is about (4,000 + 1,500) steps divided by the plain rate, plus 15-20 minutes of rendering, encoding and
the VAE stages.
"""
import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from trainer.models.demo import build_demo_modules  # noqa: E402


def steps_per_second(mode: str, batch: int, steps: int, warmup: int = 3) -> float:
    modules = build_demo_modules(0)
    unet, text_encoder = modules["unet"].train(), modules["text_encoder"].train()
    if mode == "channels_last":
        unet = unet.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(list(unet.parameters()) + list(text_encoder.parameters()), lr=1e-4)

    def loss_of(noisy, timesteps, ids, noise):
        context = text_encoder(input_ids=ids).last_hidden_state
        return F.mse_loss(unet(noisy, timesteps, encoder_hidden_states=context).sample, noise)

    forward = torch.compile(loss_of) if mode == "compile" else loss_of
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 49408, (batch, 77), generator=generator)
    for step in range(warmup + steps):
        if step == warmup:
            started = time.perf_counter()
        noisy = torch.randn(batch, 4, 16, 16, generator=generator)
        noise = torch.randn(batch, 4, 16, 16, generator=generator)
        timesteps = torch.randint(0, 1000, (batch,), generator=generator)
        if mode == "channels_last":
            noisy = noisy.to(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=mode == "bfloat16"):
            loss = forward(noisy, timesteps, ids, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps / (time.perf_counter() - started)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64, help="the pretraining's batch (--unet-batch)")
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to compile)")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {args.batch}")
    modes = ["float32", "channels_last", "bfloat16"] + (["compile"] if args.compile else [])
    rates = {}
    for mode in modes:
        rates[mode] = steps_per_second(mode, args.batch, args.steps)
        print(f"{mode:14s} {rates[mode]:.3f} steps/s  ({rates[mode] / rates['float32']:.2f}x float32)", flush=True)
    minutes = 5500 / rates["float32"] / 60
    print(f"stages 2 and 3 (5,500 steps) at the float32 rate: {minutes:.0f} min")


if __name__ == "__main__":
    main()
