"""Training speed: our loop vs the bare compute of the same step, measured side by side in one run.

    python bench/train_speed.py [--steps 30] [--rounds 3] [--configs demo,mid] [--startup-config demo|mid]
                                [--startup-size 512] [--startup-images 20] [--ratio-size 128]
                                [--skip-loop] [--skip-startup]

For each model config it prints seconds per step of `trainer.training.textual_inversion.train_embedding` (no previews,
no saves) beside the bare compute of one step with the same shapes (text-encoder forward with the trainable
vectors, UNet forward + backward on a cached latent, AdamW step), their ratio, steps/s and peak memory.
Rounds alternate loop / bare so that machine noise hits both alike; the best round of each is compared (noise
only ever adds time), and the median ratio is printed beside it.

First (while this process is still small), with the demo model (or `--startup-config mid`), each in a fresh
process:
* cold vs warm start-up: seconds from calling `train_embedding` to the loop's start (data ready) and to the
  end of the first step, with an empty latent cache, then again with the cache the first run left (a resume),
  and each process's own peak RSS (VmHWM) at `--startup-size` px, batch 1;
* step time with 5 vs 100 images in the dataset (interleaved rounds, best of each) and their ratio.
"""
import argparse
import json
import os
import random
import resource
import subprocess
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.cpu_env import apply_cpu_defaults  # noqa: E402

apply_cpu_defaults()  # as the app and the CLI do

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import CLIPTextConfig, CLIPTextModel  # noqa: E402

from common import events  # noqa: E402
from trainer.models.demo import SCHEDULER_CONFIG  # noqa: E402
from trainer.models.tokenizers import load_tokenizer  # noqa: E402
from trainer.embeddings.library import create_embedding  # noqa: E402
from trainer.models.loading import load_model  # noqa: E402
from trainer.models.sd_model import SDModel  # noqa: E402
from trainer.training.textual_inversion import train_embedding  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402


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
    return SDModel("bench-mid", "benchmid00", load_tokenizer(), te, unet, vae, dict(SCHEDULER_CONFIG),
                   torch.device("cpu"))


def make_dataset(folder: Path, size: int, count: int = 8):
    """`count` real photos at `size` px (each a different crop, so no two files are the same image)."""
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(count):
        image = Image.fromarray(np.asarray(arrays[i % 4])).convert("RGB")
        w, h = image.size
        shift = (i // 4) % 16
        image = image.crop((shift, shift, w - 15 + shift, h - 15 + shift)).resize((size, size))
        image.save(folder / f"{i:05}-0-photo {i}.png")


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
                    progress=lambda e: times.append(time.perf_counter()) if isinstance(e, events.Step) else None)
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


def time_to_first_step(model, work: Path, data: Path, cache: Path, size: int, steps: int = 3) -> dict:
    """Seconds from the call to the first and to the last step's event (start-up after the model is loaded)."""
    name = f"start{random.randrange(10**9)}"
    create_embedding(model.tokenizer, model.text_encoder, name, init_text="photo", num_vectors=4,
                     embeddings_dir=work / "emb")
    marks = []
    cfg = TrainConfig(name=name, dataset=str(data), log_dir="", width=size, height=size, steps=steps, save_every=0,
                      preview_every=0, template="subject_filewords.txt", save_optimizer_state=False, seed=0,
                      latent_cache_dir=str(cache))
    loop_start = []

    def progress(event):
        if isinstance(event, events.Started):
            loop_start.append(time.perf_counter())
        elif isinstance(event, events.Step):
            marks.append(time.perf_counter())

    start = time.perf_counter()
    train_embedding(model, cfg, work / "emb", Path("textual_inversion_templates"), progress=progress)
    return {"first_step_s": marks[0] - start, "loop_start_s": loop_start[0] - start,
            "step_s": (marks[-1] - marks[0]) / max(1, len(marks) - 1)}


def own_peak_rss_mb() -> float:
    """This process's own peak RSS: VmHWM (ru_maxrss would start from the parent's peak, inherited through
    fork and exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args):
    """One measurement in this fresh process; prints a JSON line."""
    model = load_model("demo") if args.startup_config == "demo" else mid_model()
    work = Path(args.work)
    rss_loaded = own_peak_rss_mb()
    if args.child == "startup":
        result = time_to_first_step(model, work, work / "data", work / "cache", args.startup_size)
    else:  # "ratio": step time with 5 vs 100 images, interleaved, cache warmed first
        for count in (5, 100):
            time_to_first_step(model, work, work / f"data{count}", work / "cache", args.ratio_size, steps=2)
        times = {5: [], 100: []}
        for _ in range(args.rounds):
            for count in (5, 100):
                times[count].append(time_to_first_step(model, work, work / f"data{count}", work / "cache",
                                                       args.ratio_size, steps=args.steps + 1)["step_s"])
        result = {"step_5": min(times[5]), "step_100": min(times[100]),
                  "median_ratio": statistics.median(times[100]) / statistics.median(times[5])}
    result["peak_rss_mb"] = own_peak_rss_mb()
    result["rss_after_load_mb"] = rss_loaded
    print(json.dumps(result))


def run_child(kind: str, work: Path, args) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--work", str(work), "--startup-config",
               args.startup_config, "--startup-size", str(args.startup_size), "--ratio-size", str(args.ratio_size),
               "--steps", str(args.steps), "--rounds", str(args.rounds)]
    out = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def startup_and_dataset_size(args):
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_dataset(work / "data", args.startup_size, args.startup_images)
        cold = run_child("startup", work, args)
        warm = run_child("startup", work, args)
        print(f"  {args.startup_config} {args.startup_size}px batch 1, {args.startup_images} images: seconds to the "
              f"end of the first step (after model load) cold {cold['first_step_s']:.2f} s, "
              f"warm {warm['first_step_s']:.2f} s; to the loop's start (data ready) cold {cold['loop_start_s']:.2f} s, "
              f"warm {warm['loop_start_s']:.2f} s; "
              f"step {warm['step_s']:.3f} s; "
              f"peak RSS cold {cold['peak_rss_mb']:.0f} MiB, warm {warm['peak_rss_mb']:.0f} MiB "
              f"(model loaded: {cold['rss_after_load_mb']:.0f} MiB)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_dataset(work / "data5", args.ratio_size, 5)
        make_dataset(work / "data100", args.ratio_size, 100)
        ratio = run_child("ratio", work, args)
        print(f"  {args.startup_config} {args.ratio_size}px batch 1: step with 5 images {ratio['step_5']:.4f} s, "
              f"with 100 images {ratio['step_100']:.4f} s, ratio 100/5 {ratio['step_100'] / ratio['step_5']:.3f} "
              f"(median ratio {ratio['median_ratio']:.3f}); peak RSS {ratio['peak_rss_mb']:.0f} MiB")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--configs", default="demo,mid")
    parser.add_argument("--startup-config", default="demo", choices=["demo", "mid"],
                        help="model for the start-up, memory and dataset-size runs")
    parser.add_argument("--startup-size", type=int, default=512)
    parser.add_argument("--startup-images", type=int, default=20)
    parser.add_argument("--ratio-size", type=int, default=128)
    parser.add_argument("--skip-loop", action="store_true", help="skip the loop vs bare comparison")
    parser.add_argument("--skip-startup", action="store_true", help="skip start-up and dataset-size runs")
    parser.add_argument("--child", choices=["startup", "ratio"], help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores")
    if not args.skip_startup:
        startup_and_dataset_size(args)
    for config in ([] if args.skip_loop else args.configs.split(",")):
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
