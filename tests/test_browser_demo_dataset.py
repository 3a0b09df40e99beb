"""The page in Chromium: sizes start at the demo's native 128 px; "Make a demo dataset" writes pictures of a
concept and points the Train subtab's Dataset directory at them; an unknown word is one sentence."""
import pytest

from helpers_browser import browser_page, fill, open_train_subtab, require_chromium, served_app, tmp_workspace, wait_for

pytestmark = pytest.mark.browser


def value(page, elem_id):
    return page.locator(f"#{elem_id} textarea, #{elem_id} input").first.input_value()


def test_make_a_demo_dataset_from_the_page(tmp_path):
    require_chromium()
    ws = tmp_workspace(tmp_path)
    with served_app(ws) as demo, browser_page(demo.local_url) as page:
        assert value(page, "txt2img_width") == "128" and value(page, "txt2img_height") == "128"
        open_train_subtab(page, "Preprocess images")
        page.get_by_text("Make a demo dataset").first.click()
        fill(page, "demo_dataset_concept", "a purple unicorn")
        page.locator("#demo_dataset_make").click()
        wait_for(lambda: "'unicorn'" in page.locator("#ti_error").inner_text(), what="the refusal")
        assert "circle, square, triangle, star" in page.locator("#ti_error").inner_text()

        folder = tmp_path / "shapes"
        fill(page, "demo_dataset_concept", "yellow star on a purple background")
        fill(page, "demo_dataset_count", 5)
        fill(page, "demo_dataset_dir", folder)
        page.locator("#demo_dataset_make").click()
        wait_for(lambda: "Wrote 5 pictures" in value(page, "ti_output"), what="the dataset")
        assert len(list(folder.glob("*.png"))) == 5 and len(list(folder.glob("*.txt"))) == 5
        open_train_subtab(page, "Train")
        assert value(page, "train_dataset_directory") == str(folder)
        assert value(page, "train_training_width") == "128"
