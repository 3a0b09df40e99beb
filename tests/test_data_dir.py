"""One data folder for the app and the CLI: --data-dir / $TI_TRAINER_DATA_DIR, absolute paths printed, notes
about embeddings a prompt meant and will not get."""
from pathlib import Path

from app import parse_args
from helpers_cli import run_cli
from trainer.embeddings.library import read_embedding_file
from common.folders import DATA_DIR_ENV, SHIPPED_TEMPLATES, Folders


def test_folders_resolve_against_one_data_folder(tmp_path, monkeypatch):
    folders = Folders.under(tmp_path, embeddings_dir="my-embeddings")
    assert folders.embeddings_dir == tmp_path.resolve() / "my-embeddings"
    assert folders.ckpt_dir == tmp_path.resolve() / "models/Stable-diffusion"
    assert folders.hypernetwork_dir == tmp_path.resolve() / "models/hypernetworks"
    assert folders.outputs_dir == tmp_path.resolve() / "outputs"
    assert folders.templates_dir == SHIPPED_TEMPLATES  # the data folder has none of its own
    assert folders.resolve("textual_inversion") == tmp_path.resolve() / "textual_inversion"
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "elsewhere"))
    assert Folders.under().embeddings_dir == (tmp_path / "elsewhere" / "embeddings").resolve()
    assert parse_args(["--data-dir", "x"]).data_dir == "x"


def test_cli_writes_under_the_data_dir_and_prints_absolute_paths(tmp_path):
    data, elsewhere = tmp_path / "data", tmp_path / "cwd"
    elsewhere.mkdir()
    code, out, err = run_cli(["create-embedding", "--name", "my-cat", "--data-dir", data], elsewhere)
    assert code == 0, err
    created = data.resolve() / "embeddings" / "my-cat.pt"
    assert out.strip() == f"Created: {created}" and read_embedding_file(created).name == "my-cat"
    assert not (elsewhere / "embeddings").exists()

    code, out, err = run_cli(["txt2img", "--prompt", "a photo of my-cot", "--steps", 1, "--width", 64, "--height", 64,
                              "--data-dir", data], elsewhere)
    assert code == 0, err
    written = Path(out.splitlines()[0])  # numbered on, like the txt2img tab: outputs/txt2img-images/<date>/
    assert written.is_absolute() and written.is_file()
    assert written.parent.parent == data.resolve() / "outputs" / "txt2img-images"
    assert "'my-cot' looks like an embedding name" in err and "did you mean 'my-cat'" in err

    code, _, err = run_cli(["txt2img", "--prompt", "a cat", "--steps", 1, "--width", 64, "--height", 64,
                            "--data-dir", tmp_path / "empty"], elsewhere)
    assert code == 0 and f"No embeddings found in {(tmp_path / 'empty' / 'embeddings').resolve()}" in err
