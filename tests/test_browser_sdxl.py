"""The page in Chromium on the tiny SDXL model: the caption says SDXL, Create embedding writes clip_l/clip_g,
training runs with a preview, and Train Hypernetwork is refused with its sentence."""
import pytest
from safetensors.torch import load_file

from helpers_browser import (ROOT, browser_page, fill, fill_train_form, open_train_subtab, require_chromium,
                             served_app, wait_for)
from helpers_images import make_dataset
from helpers_sdxl import sdxl_files, sdxl_model  # noqa: F401 - fixtures
from trainer.embeddings.library import read_embedding_file
from trainer.workspace import Folders, Workspace

pytestmark = pytest.mark.browser


def test_sdxl_on_the_page(tmp_path, sdxl_files, sdxl_model):
    require_chromium()
    data = make_dataset(tmp_path / "data", size=(64, 64), count=2)
    folders = Folders(ckpt_dir=sdxl_files["ckpt_dir"], embeddings_dir=tmp_path / "embeddings",
                      hypernetwork_dir=tmp_path / "hn", templates_dir=ROOT / "textual_inversion_templates",
                      outputs_dir=tmp_path / "outputs")
    ws = Workspace(folders, "cpu", model=sdxl_model)
    with served_app(ws) as demo, browser_page(demo.local_url) as page:
        wait_for(lambda: "SDXL" in page.locator("#model_status").inner_text(), what="SDXL caption")

        open_train_subtab(page, "Create embedding")
        fill(page, "train_new_embedding_name", "xl-cat")
        fill(page, "train_initialization_text", "cat")
        page.locator("#train_create_embedding").click()
        wait_for(lambda: "Created:" in page.locator("#ti_output textarea").input_value(), what="Created:")
        path = tmp_path / "embeddings" / "xl-cat.safetensors"
        assert sorted(load_file(str(path))) == ["clip_g", "clip_l"]

        open_train_subtab(page, "Train")
        page.locator("#train_train_hypernetwork").click()
        wait_for(lambda: "not available for SDXL" in page.locator("#ti_error").inner_text(), what="refusal")

        page.locator("#train_embedding input").click()
        page.get_by_role("option", name="xl-cat").click()
        fill_train_form(page, data, tmp_path / "logs", steps=3, preview_every=3, save_every=0)
        page.locator("#train_train_embedding").click()
        wait_for(lambda: "Training finished at 3 steps" in page.locator("#ti_output textarea").input_value(),
                 what="finished message", timeout=180)
        wait_for(lambda: page.locator("#ti_gallery img").count() >= 1, what="a preview image")
        assert read_embedding_file(path).step == 3
