"""Stage 4 of the demo's pretraining trains the decoder alone: what it draws gets better, and the latents the UNet
learned (the encoder's) do not move by a single bit."""
import argparse
import random

import numpy as np
import torch

from test_pretrain_whitening import load_script
from trainer.models.demo import NATIVE_SIZE, build_demo_modules
from trainer.toy.world import random_scene, render


def test_stage_four_trains_the_decoder_and_leaves_the_encoder_alone(tmp_path):
    script = load_script()
    torch.manual_seed(0)
    vae = build_demo_modules(0)["vae"].eval()
    rng = random.Random(3)
    images = np.stack([np.asarray(render(random_scene(rng), NATIVE_SIZE), dtype=np.uint8) for _ in range(4)])
    means, stds = script.encode_world(vae, images)
    encoder_before = {k: v.clone() for k, v in vae.state_dict().items() if not k.startswith(("decoder.", "post_"))}
    decoder_before = {k: v.clone() for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    error_before = script.reconstruction_error(vae, images)

    settings = argparse.Namespace(decoder_steps=16, decoder_batch=4, decoder_lr=3e-3)
    script.train_decoder(vae, means, stds, images, settings, script.Log(tmp_path / "log.txt"),
                         torch.Generator().manual_seed(6), np.random.default_rng(6))

    state = vae.state_dict()
    assert all(torch.equal(state[k], v) for k, v in encoder_before.items())  # the UNet's latents stay as they were
    assert not all(torch.equal(state[k], v) for k, v in decoder_before.items())
    assert all(torch.equal(p, p.half().float()) for p in vae.decoder.parameters())  # as the float16 file holds them
    assert not any(p.requires_grad for p in vae.parameters())
    error_after = script.reconstruction_error(vae, images)
    assert error_after < 0.92 * error_before, (error_before, error_after)  # grey levels
    assert "decoder step 15/16" in (tmp_path / "log.txt").read_text()
