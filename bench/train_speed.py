"""Training speed: our loop vs the bare compute of the same step, measured side by side in one run.

    python bench/train_speed.py [--steps 30] [--rounds 3] [--configs demo,mid]

For each model config it prints seconds per step of `trainer.textual_inversion.train_embedding` (no previews,
no saves) beside the bare compute of one step with the same shapes (text-encoder forward with the trainable
vectors, UNet forward + backward on a cached latent, AdamW step), their ratio, steps/s and peak memory.
Rounds alternate loop / bare so that machine noise hits both alike; the best round of each is compared (noise
only ever adds time), and the median ratio is printed beside it.
"""
import argparse
import os
import random
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from trainer.demo import SCHEDULER_CONFIG, load_clip_tokenizer  # noqa: E402
from trainer.embeddings import create_embedding  # noqa: E402
from trainer.models import load_model  # noqa: E402
from trainer.sd_model import SDModel  # noqa: E402
from trainer.textual_inversion import train_embedding  # noqa: E402
from trainer.train_config import TrainConfig  # noqa: E402


def mid_model() -> SDModel:
    """An SD-1.x-shaped model at a quarter of SD's channel widths (cross-attention at three levels)."""
    torch.manual_seed(0)
    te = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=256, intermediate_size=1024,
                                      num_attention_heads=4, num_hidden_layers=6, max_position_embeddings=77,
                                      hidden_act="quick_gelu", bos_token_id=49406, eos_token_id=49407,
                                      pad_token_id=49407))
    unet = UNet2DConditionModel(
        sample_size=32, block_out_channels=(64, 128, 256, 256), layers_per_block=2, cross_attention_dim=256,
        attention_head_dim=8, down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(block_out_channels=(32, 64, 64, 64), layers_per_block=1, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    for m in (te, unet, vae):
        m.eval().requires_grad_(False)
    return SDModel("bench-mid", "benchmid00", load_clip_tokenizer(), te, unet, vae, dict(SCHEDULER_CONFIG),
                   torch.device("cpu"))


def make_dataset(folder: Path, size: int, count: int = 8):
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(count):
        Image.fromarray(np.asarray(arrays[i % 4])).convert("RGB").resize((size, size)).save(folder / f"{i:05}-0-photo {i}.png")


def time_loop(model, workdir: Path, size: int, steps: int) -> float:
    """Seconds per step of the real loop, from the step events (dataset preparation excluded)."""
    name = f"bench{random.randrange(10**9)}"
    create_embedding(model.tokenizer, model.text_encoder, name, init_text="photo", num_vectors=4,
                     embeddings_dir=workdir / "emb", checkpoint_hash=model.checkpoint_hash,
                     checkpoint_name=model.name)
    times = []
    cfg = TrainConfig(name=name, dataset=str(workdir / "data"), log_dir="", width=size, height=size,
                      steps=steps + 3, save_every=0, preview_every=0, template="subject_filewords.txt",
                      save_optimizer_state=False, seed=0)
    train_embedding(model, cfg, workdir / "emb", Path("textual_inversion_templates"),
                    progress=lambda e: times.append(time.perf_counter()) if e["type"] == "step" else None)
    times = times[3:]  # warm-up steps
    return (times[-1] - times[0]) / (len(times) - 1)


def time_bare(model, size: int, steps: int) -> float:
    """The same step with nothing around it: ids -> text encoder with 4 trainable vectors -> UNet fwd/bwd."""
    te, unet = model.text_encoder, model.unet
    ids = model.tokenizer(["a photo of bench-emb, a photo"], padding="max_length", max_length=77,
                          return_tensors="pt").input_ids
    vectors = torch.nn.Parameter(torch.randn(4, model.text_width) * 0.01)
    optimizer = torch.optim.AdamW([vectors], lr=0.005, weight_decay=0)
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    latents = torch.randn(1, 4, size // 8, size // 8)
    token_embeds = te.get_input_embeddings()(ids)

    def step():
        embeds = torch.cat([token_embeds[:, :5], vectors[None], token_embeds[:, 9:]], dim=1)
        hidden = te.embeddings(inputs_embeds=embeds)
        hidden = te.encoder(inputs_embeds=hidden, attention_mask=None, is_causal=True).last_hidden_state
        cond = te.final_layer_norm(hidden)
        noise = torch.randn_like(latents)
        t = torch.randint(0, 1000, (1,))
        pred = unet(scheduler.add_noise(latents, noise, t), t, cond).sample
        loss = F.mse_loss(pred, noise)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - start) / steps


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="demo,mid")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    for config in args.configs.split(","):
        model, size = (load_model("demo"), 512) if config == "demo" else (mid_model(), 256)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            make_dataset(work / "data", size)
            loop, bare = [], []
            for _ in range(args.rounds):
                loop.append(time_loop(model, work, size, args.steps))
                bare.append(time_bare(model, size, args.steps))
        lo, ba = min(loop), min(bare)
        median_ratio = statistics.median(loop) / statistics.median(bare)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(f"{config:>5} {size}px batch 1: loop {lo:.4f} s/step ({1 / lo:.2f} steps/s), bare {ba:.4f} s/step, "
              f"ratio {lo / ba:.3f} (median ratio {median_ratio:.3f}), peak RSS so far {peak:.0f} MiB")


if __name__ == "__main__":
    main()
