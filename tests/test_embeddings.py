"""Embedding files (every format, both ways), creation, and the embeddings folder."""
import json
import pickle
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from trainer.embeddings.images import (
    TEXT_CHUNK_KEY,
    data_from_b64,
    data_to_b64,
    extract_data_panels,
    insert_data_panels,
    lcg_sequence,
)
from trainer.embeddings.library import (
    Embedding,
    EmbeddingReadError,
    clean_embedding_name,
    create_embedding,
    load_embeddings_dir,
    load_optimizer_state,
    optimizer_state_path,
    read_embedding_file,
    read_image_embedding,
    save_embedding,
    save_embedding_pt,
    save_embedding_safetensors,
    save_optimizer_state,
    to_api_json,
    write_image_embedding,
)
from common.errors import UserError

REPO = Path(__file__).resolve().parents[1]
WIDTH = 32


@pytest.fixture(scope="module")
def tokenizer():
    return CLIPTokenizer.from_pretrained(REPO / "trainer/assets/clip_tokenizer", model_max_length=77)


@pytest.fixture(scope="module")
def text_encoder():
    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=49408, hidden_size=WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, bos_token_id=49406, eos_token_id=49407, pad_token_id=49407,
        hidden_act="quick_gelu",
    )
    return CLIPTextModel(config).eval()


def make_embedding(name="cat", vectors=2, width=WIDTH, step=100, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return Embedding(
        name=name, vectors=torch.randn(vectors, width, generator=generator), step=step,
        sd_checkpoint="0123456789", sd_checkpoint_name="demo",
    )


def assert_same(read: Embedding, written: Embedding):
    assert torch.equal(read.vectors, written.vectors)
    assert read.vectors.dtype == torch.float32
    assert (read.step, read.sd_checkpoint, read.sd_checkpoint_name) == (
        written.step, written.sd_checkpoint, written.sd_checkpoint_name)


# ------------------------------------------------------------------------------------------- .pt / .safetensors


def test_embedding_properties():
    embedding = make_embedding(vectors=3, width=768)
    assert embedding.num_vectors == 3 and embedding.width == 768


def test_pt_has_the_reference_layout_and_round_trips(tmp_path):
    embedding = make_embedding()
    path = save_embedding_pt(embedding, tmp_path / "cat.pt")
    data = torch.load(path, map_location="cpu", weights_only=True)
    assert set(data) == {"string_to_token", "string_to_param", "name", "step", "sd_checkpoint", "sd_checkpoint_name"}
    assert data["string_to_token"] == {"*": 265}
    assert torch.equal(data["string_to_param"]["*"], embedding.vectors)
    assert (data["name"], data["step"], data["sd_checkpoint"]) == ("cat", 100, "0123456789")
    read = read_embedding_file(path)
    assert read.name == "cat" and read.filename == str(path)
    assert_same(read, embedding)
    assert [p.name for p in tmp_path.iterdir()] == ["cat.pt"]  # no temp file left behind


def test_safetensors_round_trip_with_metadata(tmp_path):
    embedding = make_embedding(step=7)
    path = save_embedding(embedding, tmp_path / "cat.safetensors")
    assert set(safetensors.torch.load_file(path)) == {"emb_params"}
    assert_same(read_embedding_file(path), embedding)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    from trainer.embeddings.library import atomic_write

    path = save_embedding_pt(make_embedding(seed=1), tmp_path / "cat.pt")

    def half_written(temp):
        Path(temp).write_bytes(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, half_written)
    assert torch.equal(read_embedding_file(path).vectors, make_embedding(seed=1).vectors)
    assert [p.name for p in tmp_path.iterdir()] == ["cat.pt"]


_REFERENCE_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"),
    *(("torch._utils", n) for n in ("_rebuild_tensor_v2", "_rebuild_parameter", "_rebuild_device_tensor_from_numpy")),
    *(("torch", n) for n in ("FloatStorage", "HalfStorage", "IntStorage", "LongStorage", "DoubleStorage",
                             "ByteStorage", "float32", "BFloat16Storage")),
    ("torch.nn.modules.container", "ParameterDict"),
    ("__builtin__", "set"),
}


def reference_pickle_check(path):
    """The check the reference webui runs before it loads any .pt (its safe.py, as documented in its issues):
    a zip may hold only ``<dir>/data.pkl``, ``<dir>/version`` and ``<dir>/data/<n>``, a legacy file is five
    pickles, and the pickles may name only tensor-rebuilding globals. Raises on anything else."""

    class Checker(pickle.Unpickler):
        def persistent_load(self, saved_id):
            assert saved_id[0] == "storage"

        def find_class(self, module, name):
            if (module, name) not in _REFERENCE_ALLOWED_GLOBALS:
                raise pickle.UnpicklingError(f"global '{module}/{name}' is forbidden")
            return lambda *args, **kwargs: None  # names are what is checked; nothing is built

    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                if not re.match(r"^[^/]+/((data/\d+)|version|(data\.pkl))$", name):
                    raise ValueError(f"bad file inside {path}: {name}")
            (pkl,) = [n for n in archive.namelist() if n.endswith("/data.pkl")]
            with archive.open(pkl) as handle:
                Checker(handle).load()
    else:
        with open(path, "rb") as handle:
            checker = Checker(handle)
            for _ in range(5):
                checker.load()


def test_reference_webui_pickle_check_accepts_our_pt_and_optim(tmp_path):
    embedding = make_embedding()
    path = save_embedding_pt(embedding, tmp_path / "cat.pt")
    reference_pickle_check(path)
    vectors = embedding.vectors.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([vectors], lr=0.005, weight_decay=0.0)
    vectors.sum().backward()
    optimizer.step()
    reference_pickle_check(save_optimizer_state(path, vectors, optimizer.state_dict()))
    # ...which a plain torch.save of the same dict would not pass with a current torch (extra zip records).
    torch.save(torch.load(path, weights_only=True), tmp_path / "plain.pt")
    with pytest.raises(ValueError, match="bad file inside"):
        reference_pickle_check(tmp_path / "plain.pt")


class _PipelineStandIn:
    """Just enough of a diffusers pipeline for `TextualInversionLoaderMixin.load_textual_inversion`."""

    hf_device_map = None
    components = {}


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_diffusers_load_textual_inversion_accepts_our_files(tmp_path, suffix):
    from diffusers.loaders import TextualInversionLoaderMixin

    class Loader(_PipelineStandIn, TextualInversionLoaderMixin):
        pass

    tok = CLIPTokenizer.from_pretrained(REPO / "trainer/assets/clip_tokenizer", model_max_length=77)
    config = CLIPTextConfig(vocab_size=49408, hidden_size=WIDTH, intermediate_size=37, num_attention_heads=4,
                            num_hidden_layers=1, max_position_embeddings=77)
    encoder = CLIPTextModel(config)
    embedding = make_embedding(name="mycat", vectors=2)
    path = save_embedding(embedding, tmp_path / f"mycat{suffix}")
    Loader().load_textual_inversion(str(path), token="<mycat>", tokenizer=tok, text_encoder=encoder)
    ids = tok.convert_tokens_to_ids(["<mycat>", "<mycat>_1"])
    assert torch.equal(encoder.get_input_embeddings().weight[ids].detach(), embedding.vectors)


def test_diffusers_state_dict_parser_reads_the_a1111_name(tmp_path, tokenizer):
    from diffusers.loaders.textual_inversion import TextualInversionLoaderMixin, load_textual_inversion_state_dicts

    path = save_embedding_pt(make_embedding(name="mycat"), tmp_path / "mycat.pt")
    state_dicts = load_textual_inversion_state_dicts([str(path)])
    tokens, embeddings = TextualInversionLoaderMixin._retrieve_tokens_and_embeddings([None], state_dicts, tokenizer)
    assert tokens == ["mycat"] and torch.equal(embeddings[0], make_embedding(name="mycat").vectors)


# ----------------------------------------------------------------------------------------- foreign layouts


def test_reads_a_diffusers_concept_bin_as_one_vector(tmp_path):
    vector = torch.randn(WIDTH)
    torch.save({"<cat-toy>": vector}, tmp_path / "learned_embeds.bin")
    read = read_embedding_file(tmp_path / "learned_embeds.bin")
    assert read.name == "learned_embeds" and read.num_vectors == 1 and read.step is None
    assert torch.equal(read.vectors[0], vector)


def test_reads_any_single_key_safetensors_and_half_precision(tmp_path):
    vectors = torch.randn(3, WIDTH).half()
    safetensors.torch.save_file({"whatever": vectors}, tmp_path / "x.safetensors")
    read = read_embedding_file(tmp_path / "x.safetensors")
    assert read.vectors.dtype == torch.float32 and torch.equal(read.vectors, vectors.float())


def test_reads_old_parameterdict_pt(tmp_path):
    params = torch.nn.ParameterDict({"*": torch.nn.Parameter(torch.randn(2, WIDTH))})
    torch.save({"string_to_param": params, "name": "old", "step": 3}, tmp_path / "old.pt")
    read = read_embedding_file(tmp_path / "old.pt")
    assert read.step == 3 and torch.equal(read.vectors, params["*"].detach())


def test_sdxl_file_is_read_and_skipped_with_a_reason(tmp_path):
    halves = {"clip_l": torch.randn(2, 768), "clip_g": torch.randn(2, 1280)}
    safetensors.torch.save_file(halves, tmp_path / "xl.safetensors")
    read = read_embedding_file(tmp_path / "xl.safetensors")
    assert (read.num_vectors, read.width) == (2, 2048)
    loaded, skipped = load_embeddings_dir(tmp_path, expected_width=768)
    assert loaded == {}
    assert skipped["xl"][1] == "width 2048 does not match the model's 768 (an SDXL embedding?)"


@pytest.mark.parametrize(
    "data, reason",
    [
        ({"string_to_param": {"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}}, "2 terms"),
        ({"a": torch.zeros(1, 4), "b": torch.zeros(1, 4)}, "2 terms"),
        ({"a": torch.zeros(2, 3, 4)}, "shape"),
        ({"a": torch.tensor([[1.0, float("nan")]])}, "NaN"),
        ({"a": torch.zeros(1, 4, dtype=torch.long)}, "dtype"),
        ({"step": 3}, "neither"),
        ([1, 2, 3], "list"),
    ],
)
def test_unusable_pt_contents_give_reasons(tmp_path, data, reason):
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(EmbeddingReadError, match=reason):
        read_embedding_file(tmp_path / "bad.pt")


class _Malicious:
    """Unpickling this would create a marker file."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "pwned"
    folder = tmp_path / "embeddings"
    folder.mkdir()
    payload = {"string_to_param": {"*": torch.zeros(1, WIDTH)}, "payload": _Malicious(str(marker))}
    torch.save(payload, folder / "evil.pt")
    loaded, skipped = load_embeddings_dir(folder, expected_width=WIDTH)
    assert not marker.exists()
    assert loaded == {}
    embedding, reason = skipped["evil"]
    assert embedding is None and reason.startswith("refused to load") and "not executed" in reason


# ------------------------------------------------------------------------------------------------ images


def test_lcg_matches_the_reference_sequence():
    first = [253, 242, 127, 44, 157, 27, 239, 133, 38, 79, 167, 4, 177, 95, 130, 79, 78, 14, 52, 215]
    values = lcg_sequence(100_100)
    assert values[:20].tolist() == first
    assert int(values[100:].astype(np.int64).sum()) == 12731374  # the reference's own self-check


def test_b64_chunk_encoding_is_json_with_torchtensor_lists():
    data = {"name": "x", "string_to_param": {"*": torch.tensor([[1.5, -2.0]])}}
    text = data_to_b64(data)
    import base64
    assert json.loads(base64.b64decode(text)) == {"name": "x", "string_to_param": {"*": {"TORCHTENSOR": [[1.5, -2.0]]}}}
    assert torch.equal(data_from_b64(text)["string_to_param"]["*"], torch.tensor([[1.5, -2.0]]))


def _preview(size=(96, 80)):
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(30, 255, (size[1], size[0], 3), dtype=np.uint8))


def test_image_embedding_round_trip_through_text_chunk_and_pixels(tmp_path):
    embedding = make_embedding(name="cat-500", vectors=3, width=768, step=500)
    path = write_image_embedding(embedding, _preview(), tmp_path / "stem.png")
    with Image.open(path) as image:
        assert TEXT_CHUNK_KEY in image.text
        assert image.size[1] == 80 and image.size[0] > 96 + 2
        pixels = np.asarray(image.convert("RGB"))
    read = read_image_embedding(path)
    assert read.name == "cat-500"  # the name stored inside wins over the file stem, as in the reference
    assert_same(read, embedding)
    # Re-save only the pixels: the text chunk is gone and the side panels must carry the data alone.
    Image.fromarray(pixels).save(tmp_path / "pixels_only.png")
    with Image.open(tmp_path / "pixels_only.png") as image:
        assert TEXT_CHUNK_KEY not in getattr(image, "text", {})
    assert_same(read_image_embedding(tmp_path / "pixels_only.png"), embedding)
    Image.fromarray(pixels).save(tmp_path / "lossless.webp", lossless=True)
    assert_same(read_image_embedding(tmp_path / "lossless.webp"), embedding)


def test_data_panels_layout(tmp_path):
    data = {"name": "x", "string_to_param": {"*": torch.zeros(1, 8)}}  # all-zero vector: no division by zero
    image = _preview((40, 16))
    out = insert_data_panels(image, data)
    as_json = json.dumps({"name": "x", "string_to_param": {"*": {"TORCHTENSOR": [[0.0] * 8]}}})
    raw_len = len(zlib.compress(as_json.encode(), 9))
    panel = (out.size[0] - 40 - 2) // 2
    assert panel * 16 * 3 >= raw_len and (panel * 16 * 3) % (16 * 3) == 0
    pixels = np.asarray(out)
    assert not pixels[:, panel].any() and not pixels[:, panel + 1 + 40].any()  # black separator columns
    assert np.array_equal(pixels[:, panel + 1 : panel + 41], np.asarray(image))
    assert torch.equal(extract_data_panels(out)["string_to_param"]["*"], torch.zeros(1, 8))


def test_plain_images_carry_no_embedding(tmp_path):
    _preview().save(tmp_path / "photo.png")
    Image.new("RGB", (50, 50)).save(tmp_path / "black.png")
    framed = np.full((40, 60, 3), 200, np.uint8)
    framed[:, 10] = 0
    framed[:, 50] = 0
    Image.fromarray(framed).save(tmp_path / "framed.png")
    for name in ("photo.png", "black.png", "framed.png"):
        assert read_image_embedding(tmp_path / name) is None


def test_image_with_only_the_text_chunk(tmp_path):
    from PIL import PngImagePlugin

    embedding = make_embedding(name="inside")
    info = PngImagePlugin.PngInfo()
    data = {"string_to_param": {"*": embedding.vectors}, "name": "inside", "step": 100,
            "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo"}
    info.add_text(TEXT_CHUNK_KEY, data_to_b64(data))
    _preview().save(tmp_path / "file-stem.png", pnginfo=info)
    read = read_image_embedding(tmp_path / "file-stem.png")
    assert read.name == "inside"
    assert_same(read, embedding)


# -------------------------------------------------------------------------------------- optimizer state


def test_optimizer_state_beside_the_embedding(tmp_path):
    embedding = make_embedding()
    path = save_embedding_pt(embedding, tmp_path / "cat.pt")
    assert load_optimizer_state(path, embedding.vectors) is None  # missing
    vectors = embedding.vectors.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([vectors], lr=0.005, weight_decay=0.0)
    vectors.sum().backward()
    optimizer.step()
    save_optimizer_state(path, vectors, optimizer.state_dict())
    assert optimizer_state_path(path) == Path(f"{path}.optim")
    saved = torch.load(optimizer_state_path(path), weights_only=True)
    assert set(saved) == {"hash", "optimizer_state_dict"} and len(saved["hash"]) == 4
    state = load_optimizer_state(path, vectors)
    fresh = torch.optim.AdamW([vectors], lr=0.005, weight_decay=0.0)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"])
    assert load_optimizer_state(path, vectors.detach() + 1.0) is None  # stale: the vectors changed
    optimizer_state_path(path).write_bytes(b"garbage")
    assert load_optimizer_state(path, vectors) is None


# ------------------------------------------------------------------------------------------------ create


@pytest.mark.parametrize(
    "raw, clean",
    [("my cat", "my cat"), ("  a/b\\c:*?<>|.pt  ", "abc.pt"), ("Käse_1-2.x", "Käse_1-2.x"), ("../../etc", "....etc")],
)
def test_clean_embedding_name(raw, clean):
    assert clean_embedding_name(raw) == clean


def _rows(text_encoder, ids):
    return text_encoder.get_input_embeddings().weight[ids].detach()


@pytest.mark.parametrize(
    "vectors, token_index",
    [(1, [0]), (3, [0, 1, 2]), (5, [0, 1, 2, 3, 4]), (8, [0, 0, 1, 1, 2, 3, 3, 4])],
)
def test_init_text_is_stretched_or_cut(tmp_path, tokenizer, text_encoder, vectors, token_index):
    ids = [320, 1125, 539, 320, 2368]  # "a photo of a cat" without BOS/EOS
    path = create_embedding(tokenizer, text_encoder, "cat", "a photo of a cat", vectors, embeddings_dir=tmp_path)
    created = read_embedding_file(path)
    cut = ids[:vectors]  # the text is cut to the vector count first, then spread
    expected = [cut[i * len(cut) // vectors] for i in range(vectors)]
    assert expected == [ids[i] for i in token_index]
    assert torch.equal(created.vectors, _rows(text_encoder, expected))


def test_create_defaults_and_file_contents(tmp_path, tokenizer, text_encoder):
    path = create_embedding(tokenizer, text_encoder, "  my cat! ", embeddings_dir=tmp_path / "new",
                            checkpoint_hash="abc1234567", checkpoint_name="demo")
    assert path == tmp_path / "new" / "my cat.pt"
    data = torch.load(path, weights_only=True)
    assert data["step"] == 0 and data["name"] == "my cat" and data["sd_checkpoint"] == "abc1234567"
    assert torch.equal(data["string_to_param"]["*"], _rows(text_encoder, [265]))  # "*"


@pytest.mark.parametrize("init_text", ["", "   "])
def test_empty_init_text_gives_zero_vectors(tmp_path, tokenizer, text_encoder, init_text):
    path = create_embedding(tokenizer, text_encoder, "zero", init_text, 4, embeddings_dir=tmp_path)
    assert torch.equal(read_embedding_file(path).vectors, torch.zeros(4, WIDTH))


@pytest.mark.parametrize("name", ["", "   ", "/:*?", "..."])
def test_create_refuses_a_name_without_letters_or_digits(tmp_path, tokenizer, text_encoder, name):
    with pytest.raises(UserError, match="name"):
        create_embedding(tokenizer, text_encoder, name, embeddings_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("vectors", [0, 76, -1, 1.5, "x"])
def test_create_refuses_bad_vector_counts(tmp_path, tokenizer, text_encoder, vectors):
    with pytest.raises(UserError, match="1 to 75"):
        create_embedding(tokenizer, text_encoder, "cat", num_vectors=vectors, embeddings_dir=tmp_path)


def test_create_refuses_to_overwrite_unless_asked(tmp_path, tokenizer, text_encoder):
    first = create_embedding(tokenizer, text_encoder, "cat", "cat", embeddings_dir=tmp_path)
    with pytest.raises(UserError, match="already exists") as refused:
        create_embedding(tokenizer, text_encoder, "cat", "dog", embeddings_dir=tmp_path)
    assert refused.value.control == "overwrite"  # each interface names its own control for it
    assert "--overwrite" not in str(refused.value) and "tick" not in str(refused.value)
    assert torch.equal(read_embedding_file(first).vectors, _rows(text_encoder, [2368]))
    again = create_embedding(tokenizer, text_encoder, "cat", "dog", overwrite=True, embeddings_dir=tmp_path)
    assert again == first and torch.equal(read_embedding_file(first).vectors, _rows(text_encoder, [1929]))
    save_embedding_safetensors(make_embedding(name="dog"), tmp_path / "dog.safetensors")
    with pytest.raises(UserError, match="dog.safetensors"):
        create_embedding(tokenizer, text_encoder, "dog", embeddings_dir=tmp_path)


# --------------------------------------------------------------------------------------- the folder


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # torch's note about the corrupt file
def test_load_dir_loaded_skipped_and_ignored(tmp_path, tokenizer, text_encoder):
    root = tmp_path / "embeddings"
    (root / "sub" / "deeper").mkdir(parents=True)
    save_embedding_pt(make_embedding("b", seed=2), root / "b.pt")
    save_embedding_safetensors(make_embedding("deep", seed=3), root / "sub" / "deeper" / "deep.safetensors")
    write_image_embedding(make_embedding("inimage", seed=4), _preview(), root / "sub" / "shown.png")
    save_embedding_pt(make_embedding("wide", width=1024), root / "sub" / "wide.pt")
    (root / "empty.pt").write_bytes(b"")
    (root / "corrupt.pt").write_bytes(b"\x80\x04 this is not a torch file")
    (root / "notes.txt").write_text("hello")
    _preview().save(root / "b.preview.png")
    _preview().save(root / "photo.png")
    Path(f"{root / 'b.pt'}.optim").write_bytes(b"ignored")

    loaded, skipped = load_embeddings_dir(root, expected_width=WIDTH, tokenizer=tokenizer)
    assert list(loaded) == ["b", "deep", "inimage"]
    assert loaded["deep"].filename == str(root / "sub" / "deeper" / "deep.safetensors")
    assert_same(loaded["inimage"], make_embedding("inimage", seed=4))
    assert set(skipped) == {"wide", "corrupt"}
    assert skipped["wide"][1] == "width 1024 does not match the model's 32 (an SD 2.x embedding?)"
    assert skipped["wide"][0].width == 1024
    assert skipped["corrupt"][0] is None and "not a readable PyTorch file" in skipped["corrupt"][1]

    assert load_embeddings_dir(root, expected_width=None)[0].keys() >= {"b", "deep", "inimage", "wide"}
    assert load_embeddings_dir(tmp_path / "missing", expected_width=WIDTH) == ({}, {})


def test_width_reason_names_the_family(tmp_path):
    save_embedding_pt(make_embedding("sd2", width=1024), tmp_path / "sd2.pt")
    _, skipped = load_embeddings_dir(tmp_path, expected_width=768)
    assert skipped["sd2"][1] == "width 1024 does not match the model's 768 (an SD 2.x embedding?)"


def test_duplicate_names_later_file_wins_and_the_other_is_reported(tmp_path):
    (tmp_path / "sub").mkdir()
    save_embedding_pt(make_embedding("cat", seed=1), tmp_path / "cat.pt")
    save_embedding_pt(make_embedding("cat", seed=2), tmp_path / "sub" / "cat.pt")
    loaded, skipped = load_embeddings_dir(tmp_path, expected_width=WIDTH)
    assert loaded["cat"].filename == str(tmp_path / "sub" / "cat.pt")
    embedding, reason = skipped["cat"]
    assert embedding.filename == str(tmp_path / "cat.pt") and "sub/cat.pt" in reason


def test_api_json_shape(tmp_path):
    save_embedding_pt(make_embedding("ok", vectors=3, step=12), tmp_path / "ok.pt")
    save_embedding_pt(make_embedding("wide", width=768, step=None), tmp_path / "wide.pt")
    (tmp_path / "bad.bin").write_bytes(b"junk")
    result = to_api_json(*load_embeddings_dir(tmp_path, expected_width=WIDTH))
    assert result["loaded"] == {
        "ok": {"step": 12, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo", "shape": WIDTH, "vectors": 3}
    }
    assert result["skipped"]["wide"] == {
        "step": None, "sd_checkpoint": "0123456789", "sd_checkpoint_name": "demo", "shape": 768, "vectors": 2,
        "reason": "width 768 does not match the model's 32 (an SD 1.x embedding?)",
    }
    assert result["skipped"]["bad"]["shape"] is None and result["skipped"]["bad"]["reason"]
    json.dumps(result)  # plain JSON
