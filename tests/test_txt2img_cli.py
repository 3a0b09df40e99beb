"""python -m trainer txt2img: a PNG with the reference infotext; embeddings from the folder; sentences for bad input."""
from PIL import Image

from helpers_cli import run_cli, workdir
from trainer.sampling.txt2img import read_infotext


def test_txt2img_writes_png_with_infotext_and_is_seeded(tmp_path):
    work = workdir(tmp_path)
    run_cli(["create-embedding", "--name", "thing", "--vectors", 2], work)
    args = ["txt2img", "--prompt", "a (photo:1.2) of thing", "--negative-prompt", "blurry", "--steps", 3,
            "--width", 64, "--height", 96, "--seed", 42, "--sampler", "DPM++ 2M Karras"]
    code, out, err = run_cli([*args, "--out", "a.png"], work)
    assert code == 0, err
    assert Image.open(work / "a.png").size == (64, 96)
    info = read_infotext(work / "a.png")
    assert info.startswith("a (photo:1.2) of thing\nNegative prompt: blurry\nSteps: 3, Sampler: DPM++ 2M Karras")
    assert "Seed: 42" in info and "Size: 64x96" in info
    run_cli([*args, "--out", "b.png"], work)
    assert Image.open(work / "a.png").tobytes() == Image.open(work / "b.png").tobytes()


def test_bad_sampler_and_size_are_sentences(tmp_path):
    work = workdir(tmp_path)
    code, out, err = run_cli(["txt2img", "--prompt", "x", "--sampler", "Euler z"], work)
    assert code == 2 and "Unknown sampler" in err and "Euler a" in err and err.count("\n") == 1
    code, out, err = run_cli(["txt2img", "--prompt", "x", "--width", 100], work)
    assert code == 2 and "multiple of 8" in err
