"""The bad-input corpus, as part of the suite: names, datasets, schedules, numbers, settings files, templates,
pickles and flags fed to the headless commands (in-process, the same code as `python -m trainer`).

Every case must be refused with exit code 2 and one sentence naming the problem (no traceback, no usage block),
and must leave every file of the working folder as it was: bytes and permission bits, nothing added.
"""
import json
import os
import pickle

import pytest
import torch

from helpers_cli import run_cli, workdir
from helpers_corpus import changes, one_sentence, snapshot
from helpers_images import make_dataset

MARKER = "pickle-code-ran"


class RunsCode:
    """A pickle that would create a folder when unpickled freely."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (self.path,))


@pytest.fixture(scope="module")
def corpus_work(tmp_path_factory):
    work = workdir(tmp_path_factory.mktemp("corpus"))
    make_dataset(work / "data", size=(64, 64))
    (work / "empty").mkdir()
    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    assert run_cli(["create-embedding", "--name", "subemb", "--embeddings-dir", "embeddings/sub"], work)[0] == 0
    assert run_cli(["create-hypernetwork", "--name", "hn"], work)[0] == 0
    assert run_cli(["create-hypernetwork", "--name", "deephn", "--hypernetwork-dir", "models/hypernetworks/deep"],
                   work)[0] == 0
    torch.save({"string_to_param": RunsCode(str(work / MARKER))}, work / "embeddings" / "evil.pt")
    torch.save({320: RunsCode(str(work / MARKER))}, work / "models" / "hypernetworks" / "evilhn.pt")
    with open(work / "embeddings" / "evil-plain.bin", "wb") as handle:  # a plain pickle, not torch's container
        pickle.dump({"string_to_param": RunsCode(str(work / MARKER))}, handle)
    settings = work / "settings"
    settings.mkdir()
    for name, text in {"abc.json": '{"batch_size": "abc"}', "null.json": '{"steps": null}',
                       "array.json": "[1, 2, 3]", "broken.json": '{"steps": 5,', "string.json": '"steps"',
                       "dropout.json": '{"tag_dropout": "lots"}', "preview.json": '{"preview": 5}',
                       "bool.json": '{"shuffle_tags": "maybe"}', "float_steps.json": '{"steps": 2.5}'}.items():
        (settings / name).write_text(text)
    (settings / "latin1.json").write_bytes('{"name": "caf\u00e9"}'.encode("latin-1"))
    templates = work / "my_templates"
    templates.mkdir()
    (templates / "latin1.txt").write_bytes("a photo of [name], caf\u00e9\n".encode("latin-1"))
    (templates / "empty.txt").write_text("\n\n")
    (work / "existing.png").write_bytes(b"the user's own picture")
    (work / "batch-1.png").write_bytes(b"another picture of the user's")
    return work


TRAIN = ["train-embedding", "--name", "cat", "--dataset", "data", "--width", 64, "--height", 64, "--steps", 2,
         "--quiet"]
TRAIN_HN = ["train-hypernetwork", "--name", "hn", "--dataset", "data", "--width", 64, "--height", 64, "--steps", 2,
            "--quiet"]
T2I = ["txt2img", "--steps", 2, "--width", 64, "--height", 64]

CASES = {
    # names
    "empty name": (["create-embedding", "--name", ""], "name"),
    "name of symbols": (["create-embedding", "--name", "!!!"], "name"),
    "name of 245 characters": (["create-embedding", "--name", "n" * 245], "too long"),
    "name of 300 characters": (["create-embedding", "--name", "n" * 300], "too long"),
    "name in a subfolder": (["create-embedding", "--name", "subemb"], "already exists"),
    "existing name": (["create-embedding", "--name", "cat", "--format", "safetensors"], "already exists"),
    "hypernetwork name in a subfolder": (["create-hypernetwork", "--name", "deephn"], "already exists"),
    "hypernetwork name of 300 characters": (["create-hypernetwork", "--name", "h" * 300], "too long"),
    "train a name of 300 characters": ([*TRAIN[:2], "c" * 300, *TRAIN[3:]], "too long"),
    "train an unknown name": ([*TRAIN[:2], "nobody", *TRAIN[3:]], "not found"),
    # datasets
    "missing dataset": ([*TRAIN[:4], "nowhere", *TRAIN[5:]], "does not exist"),
    "dataset is a file": ([*TRAIN[:4], "data/00000-0-astronaut.png", *TRAIN[5:]], "not a folder"),
    "empty dataset": ([*TRAIN[:4], "empty", *TRAIN[5:]], "no images"),
    "hypernetwork on an empty dataset": ([*TRAIN_HN[:4], "empty", *TRAIN_HN[5:]], "no images"),
    # schedules
    "schedule steps going back": ([*TRAIN, "--learn-rate", "1e-3:10, 1e-4:5"], "must increase"),
    "schedule steps repeated": ([*TRAIN, "--learn-rate", "1e-3:10, 1e-4:10"], "must increase"),
    "rate not a number": ([*TRAIN, "--learn-rate", "fast"], "not a number"),
    "rate nan": ([*TRAIN, "--learn-rate", "nan"], "not a usable"),
    "rate negative": ([*TRAIN, "--learn-rate", "-0.1"], "not a usable"),
    "rate empty": ([*TRAIN, "--learn-rate", " "], "empty"),
    "schedule with two colons": ([*TRAIN, "--learn-rate", "0.1:5:6"], "more than one"),
    "schedule step not a number": ([*TRAIN, "--learn-rate", "0.1:ten"], "whole number"),
    "empty clip value schedule": ([*TRAIN, "--clip-grad-mode", "value", "--clip-grad-value", ""], "empty"),
    "clip value nan": ([*TRAIN, "--clip-grad-mode", "norm", "--clip-grad-value", "nan"], "gradient clipping"),
    "hypernetwork schedule steps going back": ([*TRAIN_HN, "--learn-rate", "1e-5:10, 1e-6:3"], "must increase"),
    # numbers
    "steps not a number": ([*TRAIN, "--steps", "abc"], "--steps"),
    "zero steps": ([*TRAIN[:-3], "--steps", 0, "--quiet"], "Max steps"),
    "batch size zero": ([*TRAIN, "--batch-size", 0], "Batch size"),
    "batch size negative": ([*TRAIN, "--batch-size", -3], "Batch size"),
    "batch size not a number": ([*TRAIN, "--batch-size", "1.5"], "--batch-size"),
    "tag dropout 2": ([*TRAIN, "--tag-dropout", 2], "Tag dropout"),
    "tag dropout nan": ([*TRAIN, "--tag-dropout", "nan"], "Tag dropout"),
    "gradient accumulation zero": ([*TRAIN, "--grad-accum", 0], "accumulation"),
    "save every negative": ([*TRAIN, "--save-every", -1], "intervals"),
    "width not a multiple of 8": ([*TRAIN, "--width", 100], "multiple of 8"),
    "vectors zero": (["create-embedding", "--name", "v0", "--vectors", 0], "75"),
    "vectors not a number": (["create-embedding", "--name", "v0", "--vectors", "many"], "--vectors"),
    "txt2img width 100": ([*T2I, "--prompt", "x", "--width", 100], "multiple of 8"),
    "txt2img steps 0": ([*T2I, "--prompt", "x", "--steps", 0], "Sampling steps"),
    "txt2img cfg nan": ([*T2I, "--prompt", "x", "--cfg-scale", "nan"], "CFG scale"),
    "txt2img batch count 0": ([*T2I, "--prompt", "x", "--batch-count", 0], "Batch count"),
    "hypernet multiplier nan": ([*T2I, "--prompt", "<hypernet:hn:nan>"], "not a finite number"),
    "hypernet multiplier inf": ([*T2I, "--prompt", "<hypernet:hn:inf>"], "not a finite number"),
    "hypernet multiplier word": ([*T2I, "--prompt", "<hypernet:hn:lots>"], "not a number"),
    "unknown hypernetwork": ([*T2I, "--prompt", "<hypernet:nobody:1>"], "not found"),
    # files that must not be overwritten
    "txt2img onto an existing file": ([*T2I, "--prompt", "x", "--out", "existing.png"], "--overwrite"),
    "txt2img batch onto an existing file": ([*T2I, "--prompt", "x", "--batch-count", 2, "--out", "batch.png"],
                                            "--overwrite"),
    "txt2img onto a folder": ([*T2I, "--prompt", "x", "--out", "data"], "folder"),
    # settings files
    "settings: batch size abc": ([*TRAIN, "--settings", "settings/abc.json"], "batch_size"),
    "settings: steps null": ([*TRAIN[:-3], "--quiet", "--settings", "settings/null.json"], "steps"),
    "settings: a JSON array": ([*TRAIN, "--settings", "settings/array.json"], "array"),
    "settings: a JSON string": ([*TRAIN, "--settings", "settings/string.json"], "string"),
    "settings: broken JSON": ([*TRAIN, "--settings", "settings/broken.json"], "not valid JSON"),
    "settings: not UTF-8": ([*TRAIN, "--settings", "settings/latin1.json"], "UTF-8"),
    "settings: tag dropout text": ([*TRAIN, "--settings", "settings/dropout.json"], "tag_dropout"),
    "settings: preview a number": ([*TRAIN, "--settings", "settings/preview.json"], "preview"),
    "settings: boolean maybe": ([*TRAIN, "--settings", "settings/bool.json"], "shuffle_tags"),
    "settings: steps 2.5": ([*TRAIN[:-3], "--quiet", "--settings", "settings/float_steps.json"], "whole number"),
    "settings: missing file": ([*TRAIN, "--settings", "settings/none.json"], "Cannot read settings file"),
    # templates
    "template not UTF-8": ([*TRAIN, "--template", "my_templates/latin1.txt"], "UTF-8"),
    "template empty": ([*TRAIN, "--template", "my_templates/empty.txt"], "empty"),
    "template missing": ([*TRAIN, "--template", "nothing.txt"], "not found"),
    # pickles that would run code
    "embedding pickle that runs code": ([*TRAIN[:2], "evil", *TRAIN[3:]], "not executed"),
    "hypernetwork pickle that runs code": ([*TRAIN_HN[:2], "evilhn", *TRAIN_HN[3:]], "not executed"),
    "plain pickle that runs code": ([*TRAIN[:2], "evil-plain", *TRAIN[3:]], "not a readable PyTorch file"),
    # flags
    "unknown device flag": ([*TRAIN, "--device", "tpu"], "--device"),
    "unknown flag": ([*TRAIN, "--bogus"], "unrecognized arguments"),
    "missing dataset flag": (["train-embedding", "--name", "cat"], "--dataset"),
    "unknown latent sampling": ([*TRAIN, "--latent-sampling", "sometimes"], "--latent-sampling"),
    "unknown format": (["create-embedding", "--name", "f", "--format", "ckpt"], "--format"),
    "unknown command": (["train-everything"], "invalid choice"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_sentence_exit_2_and_changes_nothing(corpus_work, case):
    argv, expected = CASES[case]
    before = snapshot(corpus_work)
    code, out, err = run_cli(argv, corpus_work)
    message = one_sentence(err)
    assert code == 2, (case, err)
    assert expected in message, (case, message)
    assert "usage:" not in err
    assert changes(before, snapshot(corpus_work)) == {}, case
    assert not (corpus_work / MARKER).exists()


def test_the_corpus_covers_every_kind():
    kinds = {"name", "dataset", "schedule", "rate", "steps", "settings", "template", "pickle", "txt2img", "flag"}
    text = " ".join(CASES).lower()
    assert all(kind in text for kind in kinds)
    assert len(CASES) >= 60


def test_list_embeddings_names_the_refused_pickle_without_running_it(corpus_work):
    code, out, err = run_cli(["list-embeddings", "--json"], corpus_work)
    assert code == 0, err
    listed = json.loads(out)
    assert "not executed" in listed["skipped"]["evil"]["reason"]
    assert "not a readable PyTorch file" in listed["skipped"]["evil-plain"]["reason"]
    assert set(listed["loaded"]) == {"cat", "subemb"}
    assert not (corpus_work / MARKER).exists()


def test_preprocess_cli_bad_value_is_one_line_naming_the_flag(corpus_work):
    from preprocess.__main__ import main as preprocess_main
    import contextlib
    import io

    err = io.StringIO()
    with contextlib.redirect_stderr(err), pytest.raises(SystemExit) as stop:
        preprocess_main(["--src", "data", "--dst", "out", "--width", "wide"])
    assert stop.value.code == 2
    assert "--width" in one_sentence(err.getvalue())
