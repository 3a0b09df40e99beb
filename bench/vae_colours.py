"""How far apart the demo VAE puts the world's colours: stage 1 of scripts/pretrain_demo.py alone, on a smaller world.

    python bench/vae_colours.py [--vae-colour 0.5] [--vae-colour-target {linear,sqrt,margin}] [--steps 800] [--scenes 3000]
    python bench/vae_colours.py --weights trainer/assets/demo/demo.safetensors   # measure a saved VAE instead

Prints the reconstruction error on unseen scenes (grey levels) and how often the judge (trainer/toy/judge.py) still
names their shape and colour after the round trip, the latent variance along its four principal axes,
and the closest pairs of palette colours in scaled latent units (the latents the UNet sees, std 1): pairs much
closer than the median are the ones a model drawing under diffusion noise confuses. About 4.5 minutes on 2 cores.
"""
import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import pretrain_demo as P  # noqa: E402
from trainer.models.demo import build_demo_components, build_demo_modules  # noqa: E402
from trainer.toy.judge import judge  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vae-colour", type=float, default=0.0)
    parser.add_argument("--vae-colour-target", choices=("linear", "sqrt", "margin"), default="linear")
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--scenes", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64)
    parser.add_argument("--kl-weight", type=float, default=1e-4)
    parser.add_argument("--weights", type=Path, help="measure this demo weights file's VAE instead of training one")
    args = parser.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(0)
    scenes, images = P.make_world(args.scenes, 0, 2)
    if args.weights:
        vae = build_demo_components(args.weights)["vae"]
    else:
        vae = build_demo_modules(0)["vae"]
        settings = argparse.Namespace(vae_lr=args.lr, vae_steps=args.steps, vae_batch=args.batch, vae_crop=args.crop,
                                      kl_weight=args.kl_weight,
                                      vae_colour=args.vae_colour, vae_colour_target=args.vae_colour_target)
        log = P.Log(Path(tempfile.gettempdir()) / "vae_colours.log")
        P.train_vae(vae, images, settings, log, torch.Generator().manual_seed(0), np.random.default_rng(0))
        P.round_to_float16(vae)
    unseen, pictures = P.make_world(64, 1, 2)
    with torch.no_grad():
        decoded = vae.decode(vae.encode(P.to_tensor(pictures)).latent_dist.mean).sample.clamp(-1, 1)
    back = ((decoded + 1) * 127.5).round().permute(0, 2, 3, 1).numpy().astype(np.uint8)
    verdicts = [judge(picture) for picture in back]
    shapes = np.mean([v.shape == s.shape for v, s in zip(verdicts, unseen)])
    colours = np.mean([v.colour == s.colour for v, s in zip(verdicts, unseen)])
    print(f"reconstruction of 64 unseen scenes: {np.abs(back.astype(float) - pictures).mean():.2f} grey levels; "
          f"the judge names the shape of {shapes:.0%} and the colour of {colours:.0%}")
    means, stds = P.encode_world(vae, images[:1000])
    scale = 1 / (means.var() + stds.pow(2).mean()).sqrt().item()
    print("latent variance by principal axis (scaled): "
          + ", ".join(f"{v * scale ** 2:.3f}" for v in P.latent_axes(means)))
    pairs = P.palette_distances(vae, scale)
    print("closest palette colours: " + ", ".join(f"{pair} {d:.2f}" for d, pair in pairs[:6])
          + f"; median pair {np.median([d for d, _ in pairs]):.2f}")


if __name__ == "__main__":
    main()
