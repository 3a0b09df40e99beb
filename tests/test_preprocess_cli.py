"""python -m preprocess: options map onto PreprocessConfig, exit codes, one-line errors."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from helpers_preprocess import junk_png, photo, png_names
from preprocess import PreprocessConfig
from preprocess.__main__ import build_parser, config_from_args, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def src(tmp_path):
    folder = tmp_path / "src"
    folder.mkdir()
    photo("coffee").resize((150, 100)).save(folder / "cup.png")
    photo("chelsea").resize((90, 60)).save(folder / "cat.jpg")
    (folder / "cat.txt").write_text("a cat")
    junk_png(folder / "junk.png")
    return folder


def test_defaults_match_the_config():
    config = config_from_args(build_parser().parse_args(["--src", "a", "--dst", "b"]))
    assert config == PreprocessConfig(src="a", dst="b")


def test_every_option_reaches_the_config():
    argv = ["--src", "a", "--dst", "b", "--width", "640", "--height", "384", "--caption-action", "prepend",
            "--keep-original-size", "--flip", "--split", "--split-threshold", "0.4", "--overlap-ratio", "0.3",
            "--focal-crop", "--face-weight", "0.8", "--entropy-weight", "0.2", "--edges-weight", "0.4",
            "--focal-debug", "--yunet-model", "y.onnx", "--autosize", "--min-dim", "256", "--max-dim", "1024",
            "--min-area", "1000", "--max-area", "500000", "--objective", "Minimize error",
            "--error-threshold", "0.2", "--caption", "blip", "--blip-model", "m", "--beams", "3",
            "--min-length", "5", "--max-length", "20", "--device", "cpu"]
    config = config_from_args(build_parser().parse_args(argv))
    assert config == PreprocessConfig(
        src="a", dst="b", width=640, height=384, caption_action="prepend", keep_original_size=True, flip=True,
        split=True, split_threshold=0.4, overlap_ratio=0.3, focal_crop=True, face_weight=0.8,
        entropy_weight=0.2, edges_weight=0.4, focal_debug=True, yunet_model="y.onnx", autosize=True,
        min_dim=256, max_dim=1024, min_area=1000, max_area=500000, objective="Minimize error",
        error_threshold=0.2, caption="blip", blip_model="m", beams=3, min_length=5, max_length=20, device="cpu")


def test_run_in_process(src, tmp_path, capsys):
    dst = tmp_path / "dst"
    code = main(["--src", str(src), "--dst", str(dst), "--width", "64", "--height", "64", "--flip",
                 "--caption-action", "copy"])
    out, err = capsys.readouterr()
    assert code == 0
    assert png_names(dst) == ["00000-0-cat.png", "00000-1-cat.png", "00001-0-cup.png", "00001-1-cup.png"]
    assert (dst / "00000-1-cat.txt").read_text() == "a cat"
    assert out.strip() == (f"Done: 2 of 3 source files preprocessed, 4 images written to {dst} with 2 captions; "
                           "1 file skipped.")
    assert "skipped junk.png: junk.png is not an image file" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv, message", [
    (["--dst", "{tmp}/d"], "the following arguments are required: --src"),
    (["--src", "{tmp}/nope", "--dst", "{tmp}/d"], "does not exist"),
    (["--src", "{src}", "--dst", "{src}"], "must be different"),
    (["--src", "{src}", "--dst", "{tmp}/d", "--width", "4000"], "Width must be"),
    (["--src", "{src}", "--dst", "{tmp}/d", "--width", "abc"], "invalid int value"),
    (["--src", "{src}", "--dst", "{tmp}/d", "--objective", "Fast"], "invalid choice"),
    (["--src", "{src}", "--dst", "{tmp}/d", "--autosize", "--min-dim", "900"], "lower dimension bound"),
    (["--src", "{src}", "--dst", "{tmp}/d", "--caption", "blip", "--blip-model", "{tmp}/none"], "BLIP model"),
])
def test_bad_input_is_one_line_and_exit_2(src, tmp_path, capsys, argv, message):
    argv = [a.format(tmp=tmp_path, src=src) for a in argv]
    try:
        code = main(argv)
    except SystemExit as stop:  # argparse's own errors
        code = stop.code
    _, err = capsys.readouterr()
    assert code == 2
    assert err.count("\n") == 1 and message in err and err.startswith("python -m preprocess: error: ")
    assert not (tmp_path / "d").exists()


def _run(*args, cwd=ROOT):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "preprocess", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def test_subprocess_error_exit_code_and_no_traceback(tmp_path):
    proc = _run("--src", str(tmp_path / "missing"), "--dst", str(tmp_path / "d"))
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"python -m preprocess: error: The source directory {tmp_path / 'missing'} does not exist."]
    assert proc.stdout == ""


def test_subprocess_success_progress_on_stderr(src, tmp_path):
    proc = _run("--src", str(src), "--dst", str(tmp_path / "d"), "--width", "64", "--height", "64")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("Done: 2 of 3 source files preprocessed")
    assert "Preprocessing" in proc.stderr and "3/3" in proc.stderr  # tqdm
    assert "Traceback" not in proc.stderr
    assert Image.open(tmp_path / "d" / "00001-0-cup.png").size == (64, 64)


def test_no_blip_model_names_the_data_folder_and_the_flag(src, tmp_path, capsys, monkeypatch):
    from preprocess import caption as caption_module

    monkeypatch.setattr(caption_module, "_in_hf_cache", lambda repo: False)  # whatever this machine has cached
    data = tmp_path / "data"
    code = main(["--src", str(src), "--dst", str(tmp_path / "d"), "--caption", "blip", "--data-dir", str(data)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(data.resolve() / "models" / "BLIP") in err and "Or pass its folder with --blip-model." in err
    assert not (tmp_path / "d").exists()
