"""The txt2img tab in Chromium: the prompt as parsed while typing, the token counter, Generate (or Ctrl+Enter),
infotext, step i/N with ETA, Interrupt, an image drawn whole inside its box."""
import re

import pytest

from helpers_browser import browser_page, fill, require_chromium, served_app, tmp_workspace, wait_for
from trainer.embeddings.library import create_embedding
from trainer.sampling.txt2img import read_infotext

pytestmark = pytest.mark.browser



def test_type_a_prompt_see_it_parsed_and_generate(tmp_path):
    require_chromium()
    ws = tmp_workspace(tmp_path)
    model = ws.model
    create_embedding(model.tokenizer, model.text_encoder, "my-style", num_vectors=3,
                     embeddings_dir=ws.folders.embeddings_dir, checkpoint_hash=model.checkpoint_hash)
    with served_app(ws) as demo, browser_page(demo.local_url) as page:
        page.get_by_role("tab", name="txt2img", exact=True).click()
        fill(page, "txt2img_prompt", "a ((castle)) in [fog:rain:0.5], my-style")
        parsed = page.locator("#txt2img_parsed_prompt")
        wait_for(lambda: parsed.locator(".seg").count() >= 3, what="parsed segments")
        text = parsed.inner_text()
        assert "steps 1–10:" in text and "steps 11–20:" in text  # the edit switches at half of 20 steps
        assert "1.21" in text  # ((castle))
        assert parsed.locator(".seg.emb").first.inner_text().startswith("my-style")
        assert "emb\xa03v" in parsed.locator(".seg.emb").first.inner_text()  # 3 vectors
        wait_for(lambda: page.locator("#txt2img_token_counter").inner_text().strip().endswith("/75"),
                 what="token counter")
        fill(page, "txt2img_steps", 3)
        for elem_id in ("txt2img_width", "txt2img_height"):
            fill(page, elem_id, 64)
        fill(page, "txt2img_seed", 7)
        page.locator("#txt2img_prompt textarea").press("Control+Enter")  # as in the reference
        wait_for(lambda: page.locator("#txt2img_gallery img").count() >= 1, what="an image")
        infotext = page.locator("#txt2img_infotext textarea").input_value()
        assert infotext.startswith("a ((castle)) in [fog:rain:0.5], my-style\nSteps: 3, Sampler: Euler a")
        assert "Seed: 7" in infotext and "Size: 64x64" in infotext
        [saved] = (tmp_path / "outputs" / "txt2img-images").glob("*/00000-7.png")  # kept, as the reference does
        assert read_infotext(saved) == infotext
        page.screenshot(path="/tmp/ti-txt2img.png", full_page=True)


def test_progress_interrupt_and_an_image_that_fits_its_box(tmp_path):
    require_chromium()
    ws = tmp_workspace(tmp_path)
    with served_app(ws) as demo, browser_page(demo.local_url, height=900) as page:
        fill(page, "txt2img_prompt", "a photo of my-cat")
        fill(page, "txt2img_steps", 150)
        for elem_id in ("txt2img_width", "txt2img_height"):
            fill(page, elem_id, 256)
        page.locator("#txt2img_generate").click()
        progress = page.locator("#txt2img_progress")
        wait_for(lambda: re.search(r"Step \d+/150 · .* it/s · ETA \d\d:\d\d", progress.inner_text()), what="progress")
        page.locator("#txt2img_interrupt").click()
        wait_for(lambda: "Interrupted" in page.locator("#txt2img_error").inner_text(), what="interrupted")
        assert progress.inner_text().strip() == ""

        fill(page, "txt2img_steps", 2)
        fill(page, "txt2img_width", 512)
        fill(page, "txt2img_height", 384)
        page.locator("#txt2img_generate").click()
        wait_for(lambda: page.locator("#txt2img_gallery img").count() == 1, what="an image")
        notes = page.locator("#txt2img_error").inner_text()
        assert "'my-cat' looks like an embedding name" in notes and "Saved to" in notes
        image = page.locator("#txt2img_gallery img").bounding_box()
        box = page.locator("#txt2img_gallery").bounding_box()
        assert box["y"] <= image["y"] and image["y"] + image["height"] <= box["y"] + box["height"]  # not cut off
        page.screenshot(path="/tmp/ti-txt2img-fit.png")
