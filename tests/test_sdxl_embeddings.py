"""SDXL embeddings: created for both encoders as one safetensors file with `clip_l` and `clip_g`, read back in every
format, listed or skipped with a reason across model families; and diffusers' StableDiffusionXLPipeline loads the
file (one call per encoder) and then conditions exactly as we do."""
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from helpers_sdxl import sdxl_files, sdxl_model  # noqa: F401 - fixtures
from trainer.embeddings.library import (Embedding, create_embedding, load_embeddings_dir, read_embedding_file,
                                read_image_embedding, save_embedding, write_image_embedding)
from trainer.models.sdxl import prompt_encoder_for
from trainer.workspace import Folders, Workspace


def create_sdxl(model, folder: Path, name="subject", vectors=2, **kw) -> Path:
    return create_embedding(model.tokenizer, model.text_encoder, name, init_text="a photo", num_vectors=vectors,
                            embeddings_dir=folder, checkpoint_hash=model.checkpoint_hash, checkpoint_name=model.name,
                            text_encoder_2=model.text_encoder_2, **kw)


def test_create_writes_clip_l_and_clip_g_from_the_init_text(sdxl_model, tmp_path):
    path = create_sdxl(sdxl_model, tmp_path)  # the default format is .pt, but SDXL files are safetensors
    assert path == tmp_path / "subject.safetensors"
    with safe_open(str(path), "pt") as handle:
        assert sorted(handle.keys()) == ["clip_g", "clip_l"]
        assert handle.metadata()["step"] == "0" and handle.metadata()["sd_checkpoint"] == sdxl_model.checkpoint_hash
    tensors = load_file(str(path))
    ids = torch.tensor(sdxl_model.tokenizer("a photo", add_special_tokens=False)["input_ids"])
    rows_l = sdxl_model.text_encoder.get_input_embeddings().weight[ids]
    rows_g = sdxl_model.text_encoder_2.get_input_embeddings().weight[ids]
    assert torch.equal(tensors["clip_l"], rows_l) and torch.equal(tensors["clip_g"], rows_g)
    embedding = read_embedding_file(path)
    assert embedding.is_sdxl and embedding.clip_l_width == 32 and embedding.vectors.shape == (2, 80)
    assert embedding.step == 0 and embedding.sd_checkpoint_name == "xl"


def test_sdxl_embedding_round_trips_through_pt_and_images(tmp_path):
    vectors = torch.randn(3, 80)
    embedding = Embedding("style", vectors, step=12, sd_checkpoint="abc", clip_l_width=32)
    pt = read_embedding_file(save_embedding(embedding, tmp_path / "style.pt"))
    assert pt.is_sdxl and pt.clip_l_width == 32 and torch.equal(pt.vectors, vectors) and pt.step == 12
    assert sorted(k for k in torch.load(tmp_path / "style.pt", weights_only=True) if k.startswith("clip")) == [
        "clip_g", "clip_l"]
    picture = write_image_embedding(embedding, Image.new("RGB", (64, 64), "gray"), tmp_path / "style.png")
    from_image = read_image_embedding(picture)
    assert from_image.is_sdxl and from_image.clip_l_width == 32 and torch.allclose(from_image.vectors, vectors)


def test_families_skip_each_others_embeddings_with_a_reason(sdxl_model, demo_model, tmp_path):
    folder = tmp_path / "emb"
    create_sdxl(sdxl_model, folder, "xlstyle")
    create_embedding(demo_model.tokenizer, demo_model.text_encoder, "sd1style", embeddings_dir=folder)
    save_file({"clip_l": torch.zeros(1, 768), "clip_g": torch.zeros(1, 1280)}, str(folder / "bigxl.safetensors"))
    torch.save({"string_to_param": {"*": torch.zeros(1, 768)}}, folder / "v15.pt")
    save_file({"clip_l": torch.zeros(1, 32), "clip_g": torch.zeros(1, 32)}, str(folder / "narrowxl.safetensors"))

    ws = Workspace(Folders(embeddings_dir=folder), model=sdxl_model)
    loaded, skipped = ws.embeddings()
    assert list(loaded) == ["xlstyle"]
    reasons = {name: reason for name, (_, reason) in skipped.items()}
    assert reasons["sd1style"] == ("it is an SD 1.x/2.x embedding (64-wide vectors for one text encoder); "
                                   "an SDXL model needs clip_l and clip_g vectors")
    assert reasons["v15"].startswith("it is an SD 1.x embedding (768-wide")
    assert reasons["bigxl"] == "its clip_l/clip_g widths 768/1280 do not match the model's 32/48"

    loaded, skipped = load_embeddings_dir(folder, demo_model.text_width)  # SD 1.x-shaped demo model, 64 wide
    assert sorted(loaded) == ["sd1style"]
    reasons = {name: reason for name, (_, reason) in skipped.items()}
    assert reasons["bigxl"] == "width 2048 does not match the model's 64 (an SDXL embedding?)"
    assert reasons["narrowxl"] == "it is an SDXL embedding (clip_l and clip_g vectors) and this is not an SDXL model"


def test_diffusers_sdxl_pipeline_loads_our_file_and_conditions_as_we_do(sdxl_model, tmp_path):
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline

    from helpers_sdxl import tiny_sdxl_components

    path = create_sdxl(sdxl_model, tmp_path, "subject", vectors=2)
    # Trained-looking vectors, distinct from any token row.
    embedding = read_embedding_file(path)
    embedding.vectors = embedding.vectors + torch.randn(embedding.vectors.shape, generator=torch.Generator().manual_seed(3))
    save_embedding(embedding, path)

    parts = tiny_sdxl_components(seed=5)  # the same weights as the loaded model, but the pipeline's own copies
    pipe = StableDiffusionXLPipeline(
        vae=parts["vae"], text_encoder=parts["text_encoder"], text_encoder_2=parts["text_encoder_2"],
        tokenizer=sdxl_model.tokenizer.__class__.from_pretrained(sdxl_model.tokenizer.name_or_path),
        tokenizer_2=sdxl_model.tokenizer_2.__class__.from_pretrained(sdxl_model.tokenizer_2.name_or_path),
        unet=parts["unet"], scheduler=EulerDiscreteScheduler.from_config(parts["scheduler_config"]))
    state_dict = load_file(str(path))
    pipe.load_textual_inversion(state_dict["clip_g"], token="subject", text_encoder=pipe.text_encoder_2,
                                tokenizer=pipe.tokenizer_2)
    pipe.load_textual_inversion(state_dict["clip_l"], token="subject", text_encoder=pipe.text_encoder,
                                tokenizer=pipe.tokenizer)

    prompt = "a photo of subject in a garden"
    with torch.no_grad():
        theirs, _, their_pooled, _ = pipe.encode_prompt(prompt, device="cpu", num_images_per_prompt=1,
                                                        do_classifier_free_guidance=False)
        ours, our_pooled = prompt_encoder_for(sdxl_model, {"subject": embedding.vectors})([prompt])
    assert theirs.shape == ours.shape == (1, 77, 80)
    assert torch.allclose(theirs, ours, atol=1e-5)
    # The pooled output: diffusers' encoder pools at the largest token id (transformers' legacy rule), which with
    # added tokens is the first embedding token; we pool at the end token, as the reference and kohya do.
    ids = pipe.tokenizer_2(pipe.maybe_convert_prompt(prompt, pipe.tokenizer_2), padding="max_length", max_length=77,
                           truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = pipe.text_encoder_2(ids).last_hidden_state
        end = int((ids[0] == pipe.tokenizer_2.eos_token_id).nonzero()[0, 0])
        assert torch.allclose(pipe.text_encoder_2.text_projection(hidden[:, end]), our_pooled, atol=1e-5)
        assert torch.allclose(pipe.text_encoder_2.text_projection(hidden[:, int(ids[0].argmax())]), their_pooled,
                              atol=1e-5)
    without, _ = prompt_encoder_for(sdxl_model)([prompt])
    assert not torch.allclose(theirs, without, atol=1e-3)  # the embedding made the difference
    with pytest.raises(Exception):  # and the token is now taken in diffusers' tokenizer
        pipe.load_textual_inversion(state_dict["clip_l"], token="subject", text_encoder=pipe.text_encoder,
                                    tokenizer=pipe.tokenizer)


def test_create_embedding_tab_makes_an_sdxl_file(sdxl_model, tmp_path):
    from webui.create_embedding_tab import create

    ws = Workspace(Folders(embeddings_dir=tmp_path), model=sdxl_model)
    path = create(ws, "page cat", "cat", 3, False, "pt")
    assert path == tmp_path / "page cat.safetensors"
    assert {k: tuple(v.shape) for k, v in load_file(str(path)).items()} == {"clip_l": (3, 32), "clip_g": (3, 48)}
    assert list(ws.embeddings()[0]) == ["page cat"]
