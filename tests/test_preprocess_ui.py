"""The Preprocess images tab: form → PreprocessConfig, caption-review handlers, and the page in Chromium."""
import os
import tempfile

import gradio as gr
import pytest
from PIL import Image

from helpers_browser import CHROMIUM, CHROMIUM_ARGS, require_chromium
from helpers_images import make_dataset
from preprocess.caption import DEFAULT_BLIP_DIR
from webui import preprocess_tab as tab



@pytest.fixture
def private_temp(tmp_path, monkeypatch):
    """Thumbnails go to the system temp folder; keep this test's own."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "temp"))
    (tmp_path / "temp").mkdir()


def form_values(**overrides):
    values = {key: component.value for key, component in build_form()}
    values.update(overrides)
    return values


def build_form():
    with gr.Blocks():
        return tab.build().form


def test_form_defaults_are_the_references_and_map_to_the_engine_config():
    cfg = tab.config_from_form(form_values(src="in", dst="out"))
    assert (cfg.src, cfg.dst, cfg.width, cfg.height, cfg.caption_action) == ("in", "out", 512, 512, "ignore")
    assert (cfg.split_threshold, cfg.overlap_ratio) == (0.5, 0.2)
    assert (cfg.face_weight, cfg.entropy_weight, cfg.edges_weight) == (0.9, 0.15, 0.5)
    assert (cfg.min_dim, cfg.max_dim, cfg.min_area, cfg.max_area) == (384, 768, 4096, 409600)
    assert (cfg.objective, cfg.error_threshold) == ("Maximize area", 0.1)
    assert (cfg.caption, cfg.blip_model, cfg.beams, cfg.min_length, cfg.max_length) == ("", None, 1, 24, 48)

    blip = tab.config_from_form(form_values(caption=True, blip_model=str(DEFAULT_BLIP_DIR)))
    assert (blip.caption, blip.blip_model) == ("blip", None)  # default folder: the engine's own search
    assert tab.config_from_form(form_values(caption=True, blip_model=" /m/blip ")).blip_model == "/m/blip"


def test_review_handlers_page_through_a_large_folder_and_save(tmp_path, private_temp):
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(tab.PAGE_SIZE + 2):
        Image.new("RGB", (40, 30), (i * 4, 90, 160)).save(folder / f"img{i:03}.png")
        (folder / f"img{i:03}.txt").write_text(f"caption {i}")
    with gr.Blocks():
        c = tab.build()

    def shown(update):
        """(state, gallery, status, image, caption) as the page would show them."""
        return (update[c.review_state], update.get(c.review_gallery), update[c.review_status],
                update.get(c.review_image), update[c.review_caption])

    state, gallery, status, image, caption = shown(tab.load_folder(c, str(folder)))
    assert len(gallery["value"]) == tab.PAGE_SIZE and "page 1 of 2" in status
    assert (state["index"], gallery["selected_index"], caption) == (0, 0, "caption 0")  # the first is selected

    state, gallery, status, image, caption = shown(tab.show_page(c, state, +1))
    assert len(gallery["value"]) == 2 and (state["page"], state["index"], caption) == (1, 48, "caption 48")
    assert tab.show_page(c, state, +1) == gr.skip()  # no page after the last: nothing changes
    assert [label for _, label in gallery["value"]] == ["caption 48", "caption 49"]

    state = {**state, "page": 0, "index": tab.PAGE_SIZE - 1}
    state, gallery, status, image, caption = shown(tab.step_image(c, state, delta=+1))  # crosses to the next page
    assert (state["index"], state["page"], caption) == (tab.PAGE_SIZE, 1, "caption 48")
    assert gallery["selected_index"] == 0 and len(gallery["value"]) == 2
    with Image.open(image) as picture:
        assert picture.size == (40, 30)  # small images are shown as they are

    warned = tab.step_image(c, state, "caption 48 edited", delta=+1)  # moving on with unsaved edits says so
    assert warned[c.review_status].startswith("The edited caption of img048.png was not saved.")
    assert warned[c.review_caption] == "caption 49"
    assert not tab.step_image(c, state, "caption 48", delta=+1)[c.review_status].startswith("The edited")
    picked = tab.select_image(c, state, "caption 48", 1)  # the second thumbnail of the page
    assert picked[c.review_caption] == "caption 49" and picked[c.review_gallery]["selected_index"] == 1

    saved = tab.save_current(c, state, "  a new caption ")
    assert (folder / "img048.txt").read_text() == "a new caption"
    assert saved[c.review_status].startswith("Saved img048.txt.") and c.review_image not in saved
    assert saved[c.review_gallery]["value"][0][1] == "a new caption"

    assert tab.load_folder(c, str(tmp_path / "missing"))[c.review_status].startswith("**Error:** The folder")
    assert tab.save_current(c, None, "x") == {c.review_status: "Select an image first."}
    assert tab.show_page(c, None, +1) == {c.review_state: None, c.review_status: "Load a folder first."}
    (folder / "img048.png").unlink()
    assert "no longer in" in tab.save_current(c, state, "x")[c.review_status]


def launch_page(ws):
    """The tab next to a stand-in output column, with a timer-driven render like the app's."""
    from types import SimpleNamespace

    from webui import job_view, model_bar, output_column

    with gr.Blocks() as demo:
        bar = model_bar.build(ws)
        with gr.Row():
            with gr.Column():
                c = tab.build()
            with gr.Column():
                out = output_column.build()
        timer = gr.Timer(1.0, active=False)

        def render():
            job = ws.runner.current
            snap = job.snapshot() if job else None
            running = bool(snap and snap["state"] == "running")
            return (job_view.result_text(snap), job_view.error_text(snap), job_view.progress_html(snap),
                    gr.Timer(active=running))

        timer.tick(render, None, [out.output, out.error, out.progress, timer])
        shared = SimpleNamespace(out=out, job_timer=timer, load=demo.load, loaded_model=bar.loaded,
                                 model_switched=model_bar.wire(ws, bar, demo.load))
        tab.wire(ws, c, shared)
    demo.launch(prevent_thread_lock=True, quiet=True)
    return demo


@pytest.mark.browser
def test_preprocess_then_review_and_edit_a_caption_in_the_browser(tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    from trainer.workspace import Folders, Workspace

    src = make_dataset(tmp_path / "photos", size=(160, 120))
    dst = tmp_path / "prepared"
    ws = Workspace(Folders(embeddings_dir=tmp_path / "embeddings"), device="cpu")
    demo = launch_page(ws)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(15000)
            page.goto(demo.local_url)

            page.get_by_role("button", name="Preprocess", exact=True).click()  # nothing filled in: refused
            expect(page.locator("#ti_error")).to_contain_text("Please choose a source directory")

            page.get_by_label("Source directory").fill(str(src))
            page.get_by_label("Destination directory").fill(str(dst))
            page.get_by_label("Create flipped copies").check()
            expect(page.locator("#train_process_focal_crop_face_weight")).to_be_hidden()
            page.get_by_label("Auto focal point crop").check()  # shows its settings...
            expect(page.locator("#train_process_focal_crop_face_weight")).to_be_visible()
            page.get_by_label("Auto focal point crop").uncheck()  # ...and hides them again
            expect(page.locator("#train_process_focal_crop_face_weight")).to_be_hidden()
            page.get_by_label("Existing Caption txt Action").click()
            page.get_by_role("option", name="copy").click()
            page.get_by_role("button", name="Preprocess", exact=True).click()

            expect(page.locator("#ti_output textarea")).to_have_value(
                f"Done: 4 of 4 source files preprocessed, 8 images written to {dst} with 8 captions.")
            assert len(list(dst.glob("*.png"))) == 8 and len(list(dst.glob("*.txt"))) == 8
            expect(page.locator("#ti_error")).to_have_text("")

            # The finished job's destination is loaded into "Review captions".
            expect(page.locator("#train_review_folder textarea")).to_have_value(str(dst))
            thumbs = page.locator("#train_review_gallery button.thumbnail-item")
            expect(thumbs).to_have_count(8)
            expect(page.locator("#train_review_name")).to_contain_text("00000-0-00000-0-astronaut.png, 1 of 8")
            thumbs.nth(2).click()
            name = "00001-0-00001-0-coffee"
            expect(page.locator("#train_review_name")).to_contain_text(f"{name}.png, 3 of 8")
            caption = page.locator("#train_review_caption textarea")
            expect(caption).to_have_value("a photo of a coffee, daylight, detailed")

            caption.fill("espresso cup on a saucer, top view")
            page.locator("#train_review_save").click()
            expect(page.locator("#train_review_status")).to_contain_text(f"Saved {name}.txt.")
            assert (dst / f"{name}.txt").read_text(encoding="utf-8") == "espresso cup on a saucer, top view"
            assert not [f for f in os.listdir(dst) if f.startswith(".") or f.endswith(".tmp")]

            page.locator("#train_review_next").click()
            expect(page.locator("#train_review_name")).to_contain_text("00001-1-00001-0-coffee.png, 4 of 8")
            expect(page.locator("#train_review_status")).not_to_contain_text("not saved")
            caption.fill("an edit that is dropped")
            page.locator("#train_review_prev").click()
            expect(page.locator("#train_review_status")).to_contain_text(
                "The edited caption of 00001-1-00001-0-coffee.png was not saved.")
            expect(caption).to_have_value("espresso cup on a saucer, top view")

            page.get_by_label("Folder to review").fill(str(src))  # any dataset folder works
            page.locator("#train_review_load").click()
            expect(page.locator("#train_review_status")).to_contain_text(f"4 images in {src}")
            expect(thumbs).to_have_count(4)
            expect(page.locator("#train_review_caption textarea")).to_have_value(
                "a photo of a astronaut, daylight, detailed")
            page.screenshot(path="/tmp/preprocess_tab.png", full_page=True)
            browser.close()
    finally:
        demo.close()
        ws.runner.wait(10)
