"""GPU check: SD 1.5 textual inversion at 512 px - seconds per step and peak VRAM per precision setting.

    python bench/gpu_check.py [--checkpoint PATH] [--steps 50] [--size 512] [--batch 1]
    python bench/gpu_check.py --smoke        # a tiny SD-shaped model on the CPU: checks the script itself

Without --checkpoint the weights are SD 1.5-shaped (the shipped config trainer/assets/configs/sd1, randomly
initialised on the GPU: same shapes, same compute, same memory as the real model); with it, a real .safetensors/
.ckpt or diffusers folder is loaded the way the app loads it. One run trains the same embedding on the same
photos under each setting in turn - fp16 with and without gradient checkpointing, the frozen-fp32 setting
(mixed precision "no") with and without, and bf16 where the GPU has it - so their ratios hold. For each it
prints s/step (the mean after 3 warm-up steps) and the peak VRAM of the training steps
(`torch.cuda.max_memory_allocated`, reset when the loop starts - after the latents are cached and the frozen
weights are cast - and read at each step, so the fp32 weights coming back after the loop do not count), plus
the weights resident when the loop began. Target: <= 6 GB with checkpointing.
With --smoke the memory column is the process's peak RSS (it only proves the script runs).
"""
import argparse
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common.cpu_env import apply_cpu_defaults  # noqa: E402

apply_cpu_defaults()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from common import events  # noqa: E402
from trainer.embeddings.library import create_embedding  # noqa: E402
from trainer.models.loading import CONFIGS_DIR, load_model, training_scheduler_config  # noqa: E402
from trainer.models.tokenizers import TOKENIZERS, load_tokenizer  # noqa: E402
from trainer.models.sd_model import SDModel  # noqa: E402
from trainer.training.textual_inversion import train_embedding  # noqa: E402
from trainer.training.config import TrainConfig  # noqa: E402

TEMPLATES = Path(__file__).resolve().parent.parent / "textual_inversion_templates"
SMOKE_UNET = dict(block_out_channels=[32, 64], layers_per_block=1, cross_attention_dim=64, attention_head_dim=4,
                  down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
                  up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"], sample_size=8)
SMOKE_TEXT = dict(hidden_size=64, intermediate_size=128, num_attention_heads=2, num_hidden_layers=2,
                  projection_dim=64)
SMOKE_VAE = dict(block_out_channels=[32, 32], down_block_types=["DownEncoderBlock2D"] * 2,
                 up_block_types=["UpDecoderBlock2D"] * 2, layers_per_block=1, norm_num_groups=32)


def sd15_shaped_model(device: str, smoke: bool) -> SDModel:
    """UNet, VAE and text encoder from the shipped SD 1.x configs, randomly initialised on `device` (fp32,
    frozen, eval) - or, for --smoke, the same architecture shrunk to a few channels."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CONFIGS_DIR / "sd1"
    torch.manual_seed(0)
    unet_config = UNet2DConditionModel.load_config(str(config / "unet"))
    vae_config = AutoencoderKL.load_config(str(config / "vae"))
    text_config = CLIPTextConfig.from_pretrained(str(config / "text_encoder"))
    if smoke:
        unet_config.update(SMOKE_UNET)
        vae_config.update(SMOKE_VAE)
        for key, value in SMOKE_TEXT.items():
            setattr(text_config, key, value)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(unet_config)
        vae = AutoencoderKL.from_config(vae_config)
        text_encoder = CLIPTextModel(text_config)
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
    import json

    scheduler = training_scheduler_config(json.loads((config / "scheduler" / "scheduler_config.json").read_text()))
    return SDModel("sd15-shaped" if not smoke else "sd15-shaped-smoke", "0000000000",
                   load_tokenizer(TOKENIZERS["clip"]), text_encoder, unet, vae, scheduler, torch.device(device),
                   torch.float16 if device == "cuda" else torch.float32)


def make_photos(folder: Path, size: int, count: int = 4):
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    for i in range(count):  # past four photos, their mirror images and so on
        image = Image.fromarray(np.asarray(photos[i % 4])).convert("RGB").resize((size, size))
        (image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if i // 4 % 2 else image).save(folder / f"{i:05}-photo.png")


def settings_for(device: str) -> list:
    if device != "cuda":
        return [("no", False), ("no", True), ("bf16", False), ("bf16", True)]
    found = [("fp16", False), ("fp16", True), ("no", False), ("no", True)]
    if torch.cuda.is_bf16_supported():
        found.append(("bf16", True))
    return found


def peak_memory(device: str) -> float:
    """GiB: VRAM since the last reset on CUDA, the process's peak RSS elsewhere."""
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def run_setting(model, work: Path, size: int, steps: int, precision: str, checkpointing: bool, device: str,
                batch: int = 1):
    times, resident, peaks = [], [], []

    def progress(event):
        if isinstance(event, events.Started) and device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            resident.append(torch.cuda.memory_allocated() / 2**30)
        if isinstance(event, events.Step):
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter())
            peaks.append(peak_memory(device))

    name = f"check-{precision}-{int(checkpointing)}"
    create_embedding(model.tokenizer, model.text_encoder, name, init_text="photo", num_vectors=4,
                     embeddings_dir=work / "emb", overwrite=True)
    cfg = TrainConfig(name=name, dataset=str(work / "data"), log_dir=str(work / "logs"), width=size, height=size,
                      steps=steps + 3, save_every=0, preview_every=0, template="subject_filewords.txt",
                      save_optimizer_state=False, seed=0, mixed_precision=precision, batch_size=batch,
                      gradient_checkpointing=checkpointing, learn_rate="0.005")
    result = train_embedding(model, cfg, work / "emb", TEMPLATES, progress=progress)
    timed = len(times) - 4
    per_step = (times[-1] - times[3]) / timed if timed > 0 else float("nan")
    return result, per_step, max(peaks, default=float("nan")), resident[0] if resident else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", help="a real SD 1.x checkpoint (file or diffusers folder) instead of "
                                             "SD 1.5-shaped random weights")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--smoke", action="store_true", help="tiny model on the CPU, to test this script")
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device != "cuda" and not args.smoke:
        print("error: no CUDA GPU here; bench/gpu_check.py measures VRAM and needs one (--smoke runs a tiny "
              "CPU version of the check).", file=sys.stderr)
        return 2
    size = 64 if args.smoke else args.size
    if args.checkpoint:
        model = load_model(args.checkpoint, ".", device)
    else:
        model = sd15_shaped_model(device, args.smoke)
    gpu = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    params = sum(p.numel() for p in model.unet.parameters()) / 1e6
    print(f"{gpu}; torch {torch.__version__}; model {model.name} (UNet {params:.0f}M parameters); "
          f"{size} px, batch {args.batch}, {args.steps} timed steps after 3 warm-up steps")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_photos(work / "data", size, max(4, args.batch))
        run_setting(model, work, size, 1, "no", False, device)  # fills the latent cache: no VAE in the timings
        print(f"{'mixed precision':>15} {'checkpointing':>13} {'s/step':>8} {'peak GiB':>9} {'weights GiB':>11}"
              "  status")
        rows = []
        for precision, checkpointing in settings_for(device):
            result, per_step, peak, resident = run_setting(model, work, size, args.steps, precision, checkpointing,
                                                           device, args.batch)
            rows.append((precision, checkpointing, per_step, peak))
            weights = f"{resident:11.2f}" if resident == resident else f"{'-':>11}"  # (nan off CUDA)
            print(f"{precision:>15} {'on' if checkpointing else 'off':>13} {per_step:8.3f} {peak:9.2f} "
                  f"{weights}  {result.status} at step {result.step}", flush=True)
    if device == "cuda":
        best = min((peak for p, c, _, peak in rows if c and p != "no"), default=float("nan"))
        print(f"half precision with checkpointing: peak {best:.2f} GiB "
              f"({'within' if best <= 6 else 'ABOVE'} the 6 GB target)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
