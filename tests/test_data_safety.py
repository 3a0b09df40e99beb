"""Nothing the user has is lost: file modes, one file per name, training locks (in this process and across
processes, stale ones taken over), SIGTERM saving like Ctrl-C, a failed checkpoint switch keeping the model,
txt2img numbering and --out, settings files without name/dataset, oversized pictures in the embeddings folder."""
import datetime
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import time
import zlib

import pytest

from helpers_cli import ROOT, run_cli
from helpers_corpus import changes, one_sentence, snapshot
from trainer.embeddings.library import load_embeddings_dir, read_embedding_file
from common.errors import UserError
from common.files import atomic_write, atomic_write_text
from trainer.locks import TrainingLock, lock_path, read_lock
from trainer.training.config import TrainConfig
from trainer.workspace import Folders, Workspace


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


# --- file modes ---------------------------------------------------------------------------------------------

def test_writes_follow_the_umask_and_keep_an_existing_files_mode(tmp_path, work, umask_022):
    atomic_write_text(tmp_path / "new.txt", "x")
    assert mode(tmp_path / "new.txt") == 0o644
    (tmp_path / "shared.txt").write_text("old")
    os.chmod(tmp_path / "shared.txt", 0o664)
    atomic_write_text(tmp_path / "shared.txt", "new")
    assert mode(tmp_path / "shared.txt") == 0o664 and (tmp_path / "shared.txt").read_text() == "new"
    with pytest.raises(FileExistsError):  # an exclusive write never replaces
        atomic_write(tmp_path / "shared.txt", lambda temp: open(temp, "w").write("newer"), exclusive=True)
    assert (tmp_path / "shared.txt").read_text() == "new" and not list(tmp_path.glob(".*.tmp"))
    os.umask(0o077)
    atomic_write_text(tmp_path / "private.txt", "x")
    assert mode(tmp_path / "private.txt") == 0o600
    os.umask(0o022)
    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    assert mode(work / "embeddings" / "cat.pt") == 0o644
    os.chmod(work / "embeddings" / "cat.pt", 0o640)
    assert run_cli(["create-embedding", "--name", "cat", "--overwrite"], work)[0] == 0
    assert mode(work / "embeddings" / "cat.pt") == 0o640
    code, _, err = run_cli(["txt2img", "--prompt", "cat", "--steps", 2, "--width", 64, "--height", 64,
                            "--out", "cat.png"], work)
    assert code == 0, err
    assert mode(work / "cat.png") == 0o644


# --- one file per name ----------------------------------------------------------------------------------------

def test_overwrite_replaces_the_file_where_it_is(work):
    assert run_cli(["create-embedding", "--name", "deep", "--embeddings-dir", "embeddings/a/b"], work)[0] == 0
    code, out, _ = run_cli(["create-embedding", "--name", "deep", "--vectors", 3, "--overwrite"], work)
    assert code == 0 and out.strip() == f"Created: {(work / 'embeddings/a/b/deep.pt').resolve()}"
    assert sorted(p.relative_to(work).as_posix() for p in (work / "embeddings").rglob("*.pt")) == [
        "embeddings/a/b/deep.pt"]
    assert read_embedding_file(work / "embeddings/a/b/deep.pt").num_vectors == 3
    assert run_cli(["create-hypernetwork", "--name", "hn", "--hypernetwork-dir", "models/hypernetworks/x"],
                   work)[0] == 0
    code, out, _ = run_cli(["create-hypernetwork", "--name", "hn", "--overwrite"], work)
    assert code == 0 and out.strip() == f"Created: {(work / 'models/hypernetworks/x/hn.pt').resolve()}"


# --- a failed checkpoint switch -------------------------------------------------------------------------------

def test_a_checkpoint_that_fails_to_load_keeps_the_loaded_model(tmp_path, demo_model):
    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "broken.ckpt").write_bytes(b"not a checkpoint at all")
    ws = Workspace(Folders(ckpt_dir=ckpt_dir, embeddings_dir=tmp_path / "emb"), "cpu", model=demo_model)
    with pytest.raises(UserError) as refused:
        ws.load_model("broken.ckpt")
    assert str(refused.value).endswith("; demo stays loaded.") and "\n" not in str(refused.value)
    assert ws.model is demo_model and ws.model_name == "demo"


# --- locks ------------------------------------------------------------------------------------------------------

def test_create_with_overwrite_is_refused_while_the_app_trains_that_embedding(work, demo_model):
    ws = Workspace(Folders(embeddings_dir=work / "embeddings", templates_dir=work / "textual_inversion_templates"),
                   "cpu", model=demo_model)
    assert run_cli(["create-embedding", "--name", "busy"], work)[0] == 0
    cfg = TrainConfig(name="busy", dataset=str(work / "data"), width=64, height=64, steps=100000, save_every=0,
                      preview_every=0, log_dir=str(work / "logs"), seed=1)
    job = ws.start_training(cfg)
    try:
        deadline = time.time() + 120
        while not job.losses and job.running and time.time() < deadline:
            time.sleep(0.05)
        assert job.running and read_lock(work / "embeddings", "busy")["pid"] == os.getpid()
        before = snapshot(work / "embeddings")
        code, _, err = run_cli(["create-embedding", "--name", "busy", "--overwrite"], work)
        assert code == 2 and "being trained by this app" in one_sentence(err)
        assert changes(before, snapshot(work / "embeddings")) == {}
    finally:
        ws.runner.interrupt()
        ws.runner.wait(60)
    assert job.state == "interrupted" and not lock_path(work / "embeddings", "busy").exists()
    assert read_embedding_file(work / "embeddings" / "busy.pt").step == job.result.step > 0


def test_a_second_trainer_in_another_process_is_refused_and_sigterm_saves(work):
    """One CLI trainer runs in a subprocess; a second trainer of the same name, and Create with Overwrite, are
    refused (nothing changes); SIGTERM then stops the first, which saves and releases its lock."""
    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    assert run_cli(["create-hypernetwork", "--name", "hn"], work)[0] == 0
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    first = subprocess.Popen([sys.executable, "-m", "trainer", "train-embedding", "--name", "cat", "--dataset",
                              "data", "--width", "64", "--height", "64", "--steps", "100000", "--save-every", "0",
                              "--preview-every", "0", "--seed", "1", "--quiet"],
                             cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 180
        csv_files = []
        while time.time() < deadline and first.poll() is None:
            csv_files = list((work / "textual_inversion").glob("*/cat/textual_inversion_loss.csv"))
            if csv_files and len(csv_files[0].read_text().splitlines()) > 2:
                break
            time.sleep(0.2)
        assert first.poll() is None, first.communicate()
        owner = read_lock(work / "embeddings", "cat")
        assert owner["pid"] == first.pid and owner["host"] == socket.gethostname()

        before = snapshot(work / "embeddings")
        settings_before = sorted((work / "textual_inversion").rglob("settings-*.json"))
        code, _, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--width", 64,
                                "--height", 64, "--steps", 5, "--quiet"], work)
        assert code == 2 and f"already being trained by process {first.pid}" in one_sentence(err)
        code, _, err = run_cli(["create-embedding", "--name", "cat", "--overwrite"], work)
        assert code == 2 and "being trained" in one_sentence(err)
        assert changes(before, snapshot(work / "embeddings")) == {}
        assert sorted((work / "textual_inversion").rglob("settings-*.json")) == settings_before
    finally:
        first.send_signal(signal.SIGTERM)
        out, err = first.communicate(timeout=120)
    assert first.returncode == 130, err
    assert out.startswith("Training interrupted at ") and f"Embedding saved to {(work / 'embeddings/cat.pt').resolve()}." in out
    saved = read_embedding_file(work / "embeddings" / "cat.pt")
    assert saved.step == int(out.split()[3]) > 0
    assert not lock_path(work / "embeddings", "cat").exists()


def test_a_lock_left_by_a_crashed_run_is_taken_over(work):
    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock = lock_path(work / "embeddings", "cat")
    lock.write_text(json.dumps({"pid": gone.pid, "host": socket.gethostname(), "what": "embedding"}))
    assert read_lock(work / "embeddings", "cat") is None
    code, out, err = run_cli(["train-embedding", "--name", "cat", "--dataset", "data", "--width", 64, "--height", 64,
                              "--steps", 2, "--save-every", 0, "--preview-every", 0, "--quiet"], work)
    assert code == 0, err
    assert read_embedding_file(work / "embeddings" / "cat.pt").step == 2 and not lock.exists()
    lock.write_text("")  # a lock file whose writer died before writing it, long ago
    old = time.time() - 3600
    os.utime(lock, (old, old))
    with TrainingLock(work / "embeddings", "cat", "embedding") as held:
        assert held.held and json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


# --- settings files ---------------------------------------------------------------------------------------------

def test_a_settings_file_without_name_and_dataset_takes_them_from_the_flags(work):
    assert run_cli(["create-embedding", "--name", "cat"], work)[0] == 0
    (work / "partial.json").write_text(json.dumps({"steps": 3, "learn_rate": "0.01", "width": 64, "height": 64,
                                                   "save_every": 0, "preview_every": 0}))
    code, out, err = run_cli(["train-embedding", "--settings", "partial.json", "--name", "cat", "--dataset", "data",
                              "--quiet"], work)
    assert code == 0, err
    assert out.strip().startswith(
        f"Training finished at 3 steps. Embedding saved to {(work / 'embeddings/cat.pt').resolve()}. Best validation")


# --- txt2img outputs --------------------------------------------------------------------------------------------

def test_txt2img_numbers_its_outputs_and_overwrites_only_when_told(work):
    args = ["txt2img", "--prompt", "a cat", "--steps", 2, "--width", 64, "--height", 64, "--seed", 3]
    assert run_cli(args, work)[0] == 0
    code, out, err = run_cli([*args, "--batch-count", 2], work)
    assert code == 0, err
    folder = work / "outputs" / "txt2img-images" / datetime.date.today().isoformat()
    assert sorted(p.name for p in folder.glob("*.png")) == ["00000-3.png", "00001-3.png", "00002-4.png"]
    (work / "mine.png").write_bytes(b"mine")
    code, _, err = run_cli([*args, "--out", "mine.png"], work)
    assert code == 2 and "--overwrite" in one_sentence(err) and (work / "mine.png").read_bytes() == b"mine"
    assert run_cli([*args, "--out", "mine.png", "--overwrite"], work)[0] == 0
    assert (work / "mine.png").read_bytes().startswith(b"\x89PNG")


# --- the embeddings folder --------------------------------------------------------------------------------------

def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels (no pixel data follows): what a reader sees first."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


def test_an_oversized_picture_in_the_embeddings_folder_is_skipped_without_decoding(tmp_path):
    folder = tmp_path / "emb"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png_header_only(11000, 11000))
    started = time.perf_counter()
    loaded, skipped = load_embeddings_dir(folder, 32)
    assert time.perf_counter() - started < 2
    assert loaded == {} and "11000x11000" in skipped["huge"][1] and "not decoded" in skipped["huge"][1]


def test_an_embeddings_folder_that_is_a_file_is_a_sentence(work):
    (work / "notafolder").write_text("x")
    code, _, err = run_cli(["list-embeddings", "--embeddings-dir", "notafolder"], work)
    assert code == 2 and "is a file, not a folder" in one_sentence(err)
    code, _, err = run_cli(["create-embedding", "--name", "x", "--embeddings-dir", "notafolder"], work)
    assert code == 2 and "is a file, not a folder" in one_sentence(err)


def test_a_hypernetwork_being_trained_is_locked_against_overwrite_and_a_second_trainer(work):
    assert run_cli(["create-hypernetwork", "--name", "hn"], work)[0] == 0
    folder = work / "models" / "hypernetworks"
    before = snapshot(folder)
    with TrainingLock(folder, "hn", "hypernetwork"):  # what a running trainer holds
        code, _, err = run_cli(["create-hypernetwork", "--name", "hn", "--overwrite"], work)
        assert code == 2 and "being trained by this app" in one_sentence(err)
        code, _, err = run_cli(["train-hypernetwork", "--name", "hn", "--dataset", "data", "--width", 64,
                                "--height", 64, "--steps", 2, "--quiet"], work)
        assert code == 2 and "already being trained" in one_sentence(err)
    assert changes(before, snapshot(folder)) == {} and not (work / "textual_inversion").exists()


def test_the_page_says_why_a_checkpoint_did_not_load_and_keeps_the_model(tmp_path, demo_model):
    from gradio_client import Client

    from webui.app import build_app

    ckpt_dir = tmp_path / "ckpt"
    ckpt_dir.mkdir()
    (ckpt_dir / "broken.ckpt").write_bytes(b"not a checkpoint at all")
    ws = Workspace(Folders(ckpt_dir=ckpt_dir, embeddings_dir=tmp_path / "emb"), "cpu", model=demo_model)
    demo = build_app(ws)
    demo.launch(prevent_thread_lock=True, quiet=True)
    try:
        # (the checkpoint, its caption, the embedding list, then the size controls, which stay as they are)
        value, status, *_ = Client(demo.local_url, verbose=False).predict("broken.ckpt", api_name="/switch_checkpoint")
    finally:
        demo.close()
    assert value["value"] == "demo" and status.startswith("**Error:**") and status.endswith("demo stays loaded.")
    assert ws.model is demo_model
