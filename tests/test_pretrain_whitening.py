"""The demo's pretraining turns its VAE's latent so that every axis counts alike, without changing what it decodes."""
import importlib.util
import random

import numpy as np
import torch

from helpers_cli import ROOT
from trainer.models.demo import build_demo_modules
from trainer.toy.world import random_scene, render

SCRIPT = ROOT / "scripts" / "pretrain_demo.py"


def load_script():
    spec = importlib.util.spec_from_file_location("pretrain_demo", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_whitening_gives_each_latent_axis_unit_variance_and_decodes_the_same():
    script = load_script()
    vae = build_demo_modules(seed=3)["vae"].eval()
    rng = random.Random(5)
    images = np.stack([np.asarray(render(random_scene(rng), 64)) for _ in range(24)])
    pixels = script.to_tensor(images)
    with torch.no_grad():
        decoded_before = vae.decode(vae.encode(pixels).latent_dist.mean).sample
    means, stds = script.encode_world(vae, images)
    before = script.latent_axes(means)
    assert max(before) / min(before) > 5  # an untrained VAE's latent is lopsided too

    found = script.whiten_vae(vae, means, stds)

    with torch.no_grad():
        posterior = vae.encode(pixels).latent_dist
        decoded_after = vae.decode(posterior.mean).sample
    assert torch.allclose(decoded_after, decoded_before, atol=1e-3)
    assert found[0] >= found[-1] and len(found) == 4
    noise = torch.randn(posterior.mean.shape, generator=torch.Generator().manual_seed(0))
    draws = posterior.mean + posterior.std * noise
    covariance = torch.cov(script.by_pixel(draws).T)
    assert torch.allclose(covariance.diagonal(), torch.ones(4), atol=0.1), covariance
    assert (covariance - torch.diag(covariance.diagonal())).abs().max() < 0.1, covariance
    assert posterior.mean.mean(dim=(0, 2, 3)).abs().max() < 1e-3  # centred
