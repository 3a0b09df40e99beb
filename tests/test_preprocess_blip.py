"""BLIP captions through a tiny captioner built from config, and the caption actions."""
import re

import pytest

from helpers_preprocess import make_tiny_blip, photo
from preprocess import PreprocessConfig, run_preprocess
from preprocess import caption as caption_module
from preprocess import pipeline
from preprocess.caption import BlipCaptioner, combine_caption, resolve_blip_model
from common.errors import UserError

BLIP_SETTINGS = dict(beams=1, min_length=4, max_length=10)


@pytest.fixture(scope="module")
def tiny_blip(tmp_path_factory):
    return make_tiny_blip(tmp_path_factory.mktemp("blip") / "tiny-blip")


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    photo("chelsea").resize((96, 64)).save(folder / "cat.png")
    (folder / "cat.txt").write_text("my cat\n")
    photo("coffee").resize((96, 64)).save(folder / "cup.png")
    return folder


@pytest.mark.parametrize("action, existing, generated, expected", [
    ("ignore", "old", "new words", "new words"),
    ("copy", "old", "new words", "old"),
    ("prepend", "old", "new words", "old new words"),
    ("append", "old", "new words", "new words old"),
    ("copy", None, "new words", "new words"),
    ("prepend", "  ", "new", "new"),
    ("append", "old", "", "old"),
    ("ignore", "old", "", ""),
])
def test_combine_caption(action, existing, generated, expected):
    assert combine_caption(action, existing, generated) == expected


def test_captioner_loads_from_a_folder_and_captions(tiny_blip):
    with BlipCaptioner(tiny_blip, **BLIP_SETTINGS) as captioner:
        first = captioner(photo("chelsea"))
        again = captioner(photo("chelsea"))
    assert isinstance(first, str) and first.strip() and first == again  # greedy decoding is deterministic
    assert not hasattr(captioner, "model")  # released


def test_blip_captions_with_every_action(tiny_blip, src, tmp_path, monkeypatch):
    loads = []

    class CountingCaptioner(BlipCaptioner):
        def __init__(self, *args, **kwargs):
            loads.append(args)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(pipeline, "BlipCaptioner", CountingCaptioner)
    with BlipCaptioner(tiny_blip, **BLIP_SETTINGS) as reference:
        generated = reference(photo("chelsea").resize((96, 64)).resize((64, 64)))  # what the output looks like
    for action, expected in [("ignore", generated), ("copy", "my cat"), ("prepend", f"my cat {generated}"),
                             ("append", f"{generated} my cat")]:
        dst = tmp_path / action
        result = run_preprocess(PreprocessConfig(src=src, dst=dst, width=64, height=64, caption="blip",
                                                 blip_model=tiny_blip, caption_action=action, **BLIP_SETTINGS))
        assert result.written_count == 2 and len(result.captions) == 2
        cat_caption = (dst / "00000-0-cat.txt").read_text()
        assert cat_caption == expected, action
        assert (dst / "00001-0-cup.txt").read_text().strip()  # no existing caption: BLIP's own
    assert len(loads) == 4  # once per run, not per image


def test_no_blip_model_is_a_clear_error(tmp_path, monkeypatch, src):
    monkeypatch.chdir(tmp_path)  # no models/BLIP here
    monkeypatch.setattr(caption_module, "_in_hf_cache", lambda repo: False)
    with pytest.raises(UserError, match="No BLIP captioning model is available"):
        resolve_blip_model(None)
    with pytest.raises(UserError, match="No BLIP"):
        run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", caption="blip"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_blip_model(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no config.json"):
        resolve_blip_model(tmp_path / "empty")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(UserError, match="could not be loaded"):
        BlipCaptioner(broken)


def test_the_missing_model_message_names_the_data_folder(tmp_path, monkeypatch, src):
    """With --data-dir elsewhere, BLIP is looked for in (and the sentence names) that folder's models/BLIP."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(caption_module, "_in_hf_cache", lambda repo: False)
    data = tmp_path / "elsewhere"
    with pytest.raises(UserError, match=re.escape(str(data.resolve() / "models" / "BLIP"))):
        run_preprocess(PreprocessConfig(src=src, dst=tmp_path / "d", caption="blip",
                                        blip_default_dir=data / "models" / "BLIP"))
    assert not (tmp_path / "d").exists()


def test_default_folder_models_blip(tmp_path, monkeypatch, tiny_blip):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "BLIP").symlink_to(tiny_blip, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    assert resolve_blip_model(None) == "models/BLIP"
