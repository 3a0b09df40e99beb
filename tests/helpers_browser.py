"""Serve the real app in-process and drive it with Playwright in Debian's Chromium."""
import contextlib
import os
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
ROOT = Path(__file__).resolve().parent.parent


def require_chromium():
    if not os.path.exists(CHROMIUM):
        pytest.skip("Debian chromium is not installed (apt-get install -y chromium)")


@contextlib.contextmanager
def served_app(ws):
    """The full page of app.py for workspace `ws`, on a free local port."""
    from webui.app import build_app
    from webui.job_view import CSS

    demo = build_app(ws)
    demo.queue(default_concurrency_limit=2)
    demo.launch(prevent_thread_lock=True, quiet=True, css=CSS, footer_links=[])
    try:
        yield demo
    finally:
        demo.close()


@contextlib.contextmanager
def browser_page(url, width=1400, height=1600):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(60_000)
            page.goto(url)
            yield page
        finally:
            browser.close()


def fill(page, elem_id, value):
    """Type into a Gradio textbox/number by its elem_id and commit it."""
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def open_train_subtab(page, name):
    page.get_by_role("tab", name="Train", exact=True).first.click()
    page.get_by_role("tab", name=name, exact=True).last.click()


def wait_for(condition, timeout=90, what="condition"):
    """Poll `condition()` until it is true; fail saying `what` did not happen in time."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def fill_train_form(page, dataset, log_dir, steps, preview_every, save_every, size=64):
    """The Train subtab's dataset, log folder, max steps, intervals and training size."""
    fill(page, "train_dataset_directory", dataset)
    fill(page, "train_log_directory", log_dir)
    fill(page, "train_steps", steps)
    fill(page, "train_create_image_every", preview_every)
    fill(page, "train_save_embedding_every", save_every)
    for elem_id in ("train_training_width", "train_training_height"):
        fill(page, elem_id, size)


def tmp_workspace(tmp_path):
    """A workspace whose every folder lies in the test's temp dir (templates: the shipped ones)."""
    from trainer.workspace import Folders, Workspace

    folders = Folders(ckpt_dir=tmp_path / "ckpt", embeddings_dir=tmp_path / "embeddings",
                      hypernetwork_dir=tmp_path / "hn", templates_dir=ROOT / "textual_inversion_templates",
                      outputs_dir=tmp_path / "outputs")
    return Workspace(folders, "cpu")


LINES_JS = """(id) => [...document.querySelectorAll(`#${id} g.mark-line path`)]
    .map(p => ({stroke: getComputedStyle(p).stroke, length: p.getTotalLength()}))"""


def drawn_lines(page, elem_id="ti_loss_plot", min_length=20):
    """The chart's line marks that are really drawn: a visible stroke and a length of more than a few pixels."""
    lines = page.evaluate(LINES_JS, elem_id)
    return [line for line in lines if line["stroke"] not in ("", "none") and line["length"] > min_length]


def in_viewport(page, selector) -> bool:
    """Whether the element's top lies inside the visible part of the page."""
    box = page.locator(selector).bounding_box()
    return box is not None and 0 <= box["y"] < page.viewport_size["height"]
