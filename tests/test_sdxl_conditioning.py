"""SDXL conditioning on the tiny SDXL model: both encoders' penultimate states side by side, the pooled projection
of the second, the prompt grammar and embeddings as on SD 1.x, size/crop micro-conditioning, the fp32 VAE, and
txt2img images that follow the prompt."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from helpers_images import make_dataset
from helpers_sdxl import sdxl_files, sdxl_model  # noqa: F401 - fixtures
from trainer.training.dataset import TextualInversionDataset
from trainer.sampling.txt2img import Txt2ImgParams, txt2img
from trainer.models.sdxl import SDXLPromptEncoder, batch_time_ids, prompt_encoder_for, size_time_ids, vae_precision


def test_context_is_both_penultimate_states_and_pooled_is_the_projection(sdxl_model):
    model = sdxl_model
    context, pooled = prompt_encoder_for(model)(["a photo of a cat"])
    assert context.shape == (1, 77, 80) and pooled.shape == (1, 40)
    ids = model.tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    row = [model.tokenizer.bos_token_id] + ids + [model.tokenizer.eos_token_id]
    ids_l = torch.tensor([row + [model.tokenizer.eos_token_id] * (77 - len(row))])
    ids_g = torch.tensor([row + [model.tokenizer_2.pad_token_id] * (77 - len(row))])  # "!" padding
    assert model.tokenizer_2.pad_token_id == 0
    with torch.no_grad():
        out_l = model.text_encoder(input_ids=ids_l, output_hidden_states=True)
        out_g = model.text_encoder_2(input_ids=ids_g, output_hidden_states=True)
    assert torch.allclose(context[..., :32], out_l.hidden_states[-2], atol=1e-5)
    assert torch.allclose(context[..., 32:], out_g.hidden_states[-2], atol=1e-5)
    assert torch.allclose(pooled, out_g.text_embeds, atol=1e-5)
    # Clip skip 2 takes one layer further back in both encoders.
    skipped, _ = prompt_encoder_for(model, clip_skip=2)(["a photo of a cat"])
    assert torch.allclose(skipped[..., :32], out_l.hidden_states[-3], atol=1e-5)
    assert torch.allclose(skipped[..., 32:], out_g.hidden_states[-3], atol=1e-5)


def test_prompt_grammar_works_on_both_encoders(sdxl_model):
    encoder = prompt_encoder_for(sdxl_model)
    plain, pooled = encoder(["a cat on a mat"])
    weighted, weighted_pooled = encoder(["a (cat:1.5) on a mat"])
    assert weighted.shape == plain.shape
    # Emphasis scales the cat's token in both halves (then each chunk keeps its mean): the other tokens differ
    # only by that rescale, the cat's by much more.
    for half in (slice(0, 32), slice(32, 80)):
        change = (weighted[0, :, half] - plain[0, :, half]).abs().mean(dim=-1)
        assert change[2] > 3 * change[5]
    assert torch.allclose(weighted_pooled, pooled)  # the pooled projection carries no emphasis (as the reference)
    broken, _ = encoder(["a cat BREAK on a mat"])
    assert broken.shape == (1, 154, 80)
    assert encoder.count_tokens("a cat BREAK on a mat") == (78, 150)  # a full first chunk, then 3


def test_embedding_vectors_reach_both_encoders_and_get_gradients(sdxl_model):
    vectors = torch.randn(3, 80, generator=torch.Generator().manual_seed(0), requires_grad=True)
    encoder = SDXLPromptEncoder(sdxl_model.tokenizer, sdxl_model.text_encoder, sdxl_model.tokenizer_2,
                                sdxl_model.text_encoder_2, {"mystyle": vectors})
    context, pooled = encoder(["art by mystyle"])
    plain, plain_pooled = prompt_encoder_for(sdxl_model)(["art by mystyle"])
    assert not torch.allclose(context[..., :32], plain[..., :32]) and not torch.allclose(context[..., 32:], plain[..., 32:])
    assert not torch.allclose(pooled, plain_pooled)
    (context.square().mean() + pooled.square().mean()).backward()
    assert vectors.grad[:, :32].abs().sum() > 0 and vectors.grad[:, 32:].abs().sum() > 0
    with pytest.raises(Exception, match="needs 80"):
        prompt_encoder_for(sdxl_model, {"old": torch.zeros(1, 32)})


def test_micro_conditioning_comes_from_each_images_size(sdxl_model, tmp_path):
    make_dataset(tmp_path / "resized", size=(96, 80), count=2)
    dataset = TextualInversionDataset(sdxl_model, tmp_path / "resized", 64, 64)
    batch = next(dataset.epoch(2, __import__("random").Random(0), torch.Generator().manual_seed(0)))
    assert batch.original_sizes == [(80, 96), (80, 96)] and batch.crops == [(0, 0), (0, 0)]
    ids = batch_time_ids(batch, batch.latents, sdxl_model.vae_scale_factor)
    assert ids.tolist() == [[80, 96, 0, 0, 64, 64]] * 2
    make_dataset(tmp_path / "kept", size=(100, 72), count=1)
    kept = TextualInversionDataset(sdxl_model, tmp_path / "kept", resize=False)
    batch = next(kept.epoch(1, __import__("random").Random(0), torch.Generator().manual_seed(0)))
    assert batch.latents.shape[-2:] == (9, 12)  # trimmed to 96x72
    assert batch_time_ids(batch, batch.latents, 8).tolist() == [[72, 100, 0, 0, 72, 96]]
    # The UNet does listen to those numbers.
    context, pooled = prompt_encoder_for(sdxl_model)(["a photo"])
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        outputs = [sdxl_model.unet(latents, 500, encoder_hidden_states=context, added_cond_kwargs={
            "text_embeds": pooled, "time_ids": size_time_ids(h, w, 1)}).sample for h, w in ((64, 64), (1024, 768))]
    assert not torch.allclose(outputs[0], outputs[1])


def test_sdxl_vae_runs_in_fp32_even_under_half_precision_autocast(sdxl_files):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_config(sdxl_files["components"]["vae"].config).to(torch.bfloat16)
    model = SimpleNamespace(is_sdxl=True, vae=vae)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with vae_precision(model):
            assert next(vae.parameters()).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
            decoded = vae.decode(torch.randn(1, 4, 8, 8)).sample
        assert torch.is_autocast_enabled("cpu")
    assert decoded.dtype == torch.float32 and next(vae.parameters()).dtype == torch.bfloat16
    sd1 = SimpleNamespace(is_sdxl=False, vae=vae)
    with vae_precision(sd1):
        assert next(vae.parameters()).dtype == torch.bfloat16  # SD 1.x/2.x VAEs are left alone


def pixels(result):
    return np.asarray(result.image, dtype=np.int16)


def test_txt2img_on_sdxl_follows_prompt_grammar_and_embeddings(sdxl_model):
    def generate(prompt, embeddings={}, **kw):
        params = Txt2ImgParams(prompt, steps=3, width=64, height=64, seed=7, **kw)
        return txt2img(sdxl_model, params, embeddings)[0]

    base = generate("a photo of mystyle")
    assert base.image.size == (64, 64) and "Size: 64x64" in base.infotext
    assert np.array_equal(pixels(base), pixels(generate("a photo of mystyle")))  # seeded
    vectors = torch.randn(2, 80, generator=torch.Generator().manual_seed(0)) * 5
    variants = [generate("a photo of mystyle", {"mystyle": vectors}), generate("a (photo:1.6) of mystyle"),
                generate("a photo BREAK of mystyle"), generate("a photo of mystyle AND a tree"),
                generate("a photo of mystyle", negative_prompt="blurry")]
    for variant in variants:
        assert not np.array_equal(pixels(base), pixels(variant))
    wide = txt2img(sdxl_model, Txt2ImgParams("a photo", steps=2, width=96, height=64, seed=1))[0]
    assert wide.image.size == (96, 64)
