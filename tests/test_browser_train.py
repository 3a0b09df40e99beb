"""The page in Chromium: create an embedding, train with previews, watch loss arrive, interrupt, train again."""
import re

import pytest

from helpers_browser import (browser_page, drawn_lines, fill, fill_train_form, in_viewport, open_train_subtab,
                             require_chromium, served_app, tmp_workspace, wait_for)
from helpers_images import make_dataset
from trainer.embeddings.library import read_embedding_file

pytestmark = pytest.mark.browser

RAW, SMOOTHED, VALIDATION = "rgb(148, 163, 184)", "rgb(249, 115, 22)", "rgb(37, 99, 235)"  # job_view.SERIES_COLORS


def strokes(page) -> set:
    """The colours of the chart's lines that are really drawn."""
    return {line["stroke"] for line in drawn_lines(page)}


def progress_text(page):
    return page.locator("#ti_progress").inner_text()


def current_step(page):
    match = re.search(r"Step (\d+)/", progress_text(page))
    return int(match.group(1)) if match else 0


def test_create_train_preview_interrupt_and_resume(tmp_path):
    require_chromium()
    data = make_dataset(tmp_path / "data", size=(512, 512))  # photos as a camera gives them: slow to prepare
    (data / "broken.png").write_bytes(b"not an image")
    ws = tmp_workspace(tmp_path)
    with served_app(ws) as demo, browser_page(demo.local_url, height=900) as page:
        # previews made from the txt2img tab's parameters (small, so they are quick)
        fill(page, "txt2img_prompt", "a photo of browser-cat")
        fill(page, "txt2img_steps", 2)
        for elem_id in ("txt2img_width", "txt2img_height"):
            fill(page, elem_id, 64)

        # Create embedding
        open_train_subtab(page, "Create embedding")
        fill(page, "train_new_embedding_name", "browser-cat")
        fill(page, "train_initialization_text", "cat")
        page.locator("#train_create_embedding").click()
        wait_for(lambda: "Created:" in page.locator("#ti_output textarea").input_value(), what="Created:")
        assert (tmp_path / "embeddings" / "browser-cat.pt").is_file()

        # A second create without Overwrite is refused with a sentence, and nothing is clobbered
        page.locator("#train_create_embedding").click()
        wait_for(lambda: "exists" in page.locator("#ti_error").inner_text(), what="refusal")

        # Train with previews every 3 steps
        open_train_subtab(page, "Train")
        page.locator("#train_embedding input").click()
        page.get_by_role("option", name="browser-cat").click()
        fill_train_form(page, data, tmp_path / "logs", steps=100000, preview_every=3, save_every=3)
        page.locator("#train_preview_from_txt2img input").check()
        page.locator("#train_train_embedding").scroll_into_view_if_needed()
        page.locator("#train_train_embedding").click()

        # the first run's chart draws its lines (a stroke and a real length), not just empty axes
        wait_for(lambda: {RAW, SMOOTHED} <= strokes(page), what="raw and smoothed loss lines drawn")
        # progress stays in view where the button is: the live status beside it and the (sticky) output column
        wait_for(lambda: "Step" in page.locator("#train_live_status").inner_text(), what="live status")
        assert in_viewport(page, "#train_live_status") and in_viewport(page, "#ti_progress")
        wait_for(lambda: page.locator("#ti_gallery img").count() >= 2, what="two preview images")
        wait_for(lambda: current_step(page) >= 6, what="steps")
        text = progress_text(page)
        assert "Loss:" in text and "it/s" in text and "ETA" in text and "Last prompt" in text
        assert "skipped broken.png" in text
        wait_for(lambda: page.locator("#ti_parsed_prompt .seg").count() >= 1, what="parsed preview prompt")

        # A second start while training is refused with a message
        page.locator("#train_train_embedding").click()
        wait_for(lambda: "Another job is running" in page.locator("#ti_error").inner_text(), what="refusal")

        # Reloading the page re-attaches to the running job: its tab, its form, its chart and previews
        page.reload()
        dataset_box = page.locator("#train_dataset_directory textarea")
        wait_for(lambda: dataset_box.is_visible() and dataset_box.input_value() == str(data), what="restored form")
        assert page.locator("#train_embedding input").input_value() == "browser-cat"
        assert page.locator("#train_create_image_every input").input_value() == "3"
        assert page.locator("#train_preview_from_txt2img input").is_checked()
        wait_for(lambda: "running" in progress_text(page), what="re-attached progress")
        wait_for(lambda: {RAW, SMOOTHED} <= strokes(page) and page.locator("#ti_gallery img").count() >= 2,
                 what="chart and previews after reload")
        step_before = current_step(page)
        wait_for(lambda: current_step(page) > step_before, what="progress after reload")

        # Interrupt saves, and the buttons work again
        page.locator("#train_interrupt_training").click()
        wait_for(lambda: "Training interrupted at" in page.locator("#ti_output textarea").input_value(),
                 what="interrupted message")
        message = page.locator("#ti_output textarea").input_value()
        stopped_at = int(re.search(r"interrupted at (\d+) steps", message).group(1))
        saved = read_embedding_file(tmp_path / "embeddings" / "browser-cat.pt")
        assert saved.step == stopped_at > 0
        assert "Skipped broken.png: cannot be read as an image" in page.locator("#ti_output textarea").input_value()
        page.screenshot(path="/tmp/ti-after-interrupt.png", full_page=True)

        # Train again: load the saved settings back into a form changed meanwhile
        page.locator("#train_preview_from_txt2img input").uncheck()
        page.get_by_role("tab", name="txt2img", exact=True).click()
        fill(page, "txt2img_prompt", "something else")
        open_train_subtab(page, "Train")
        fill(page, "train_log_directory", tmp_path / "logs")
        page.locator("#train_settings_file input").click()
        page.get_by_role("option").first.click()
        page.locator("#train_load_settings").click()
        wait_for(lambda: "Loaded settings" in page.locator("#ti_output textarea").input_value(), what="loaded")
        assert page.locator("#train_dataset_directory textarea").input_value() == str(data)
        assert page.locator("#train_create_image_every input").input_value() == "3"
        assert page.locator("#train_embedding input").input_value() == "browser-cat"
        assert page.locator("#train_preview_from_txt2img input").is_checked()  # restored with the rest
        assert page.locator("#txt2img_prompt textarea").input_value() == "a photo of browser-cat"
        fill(page, "train_steps", stopped_at + 4)
        fill(page, "train_create_image_every", 0)
        page.locator("#train_train_embedding").click()
        wait_for(lambda: f"Training finished at {stopped_at + 4} steps" in
                 page.locator("#ti_output textarea").input_value(), what="finished message")
        assert read_embedding_file(tmp_path / "embeddings" / "browser-cat.pt").step == stopped_at + 4
        # the resumed run's chart starts with the first session's steps (read back from its loss CSV)
        losses = ws.runner.current.snapshot()["losses"]
        assert [step for step, _ in losses] == list(range(1, stopped_at + 5))
        # raw, smoothed and the validation loss are drawn: checked before each run's first step and at the end,
        # and the resumed run's line starts with the first run's check at step 0 (so it spans the whole chart)
        assert ws.runner.current.snapshot()["validations"][0][0] == 0
        wait_for(lambda: strokes(page) == {RAW, SMOOTHED, VALIDATION}, what="three lines after the resumed run")
