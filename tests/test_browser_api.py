"""The page and the HTTP API share one job: a training started over HTTP shows live in an open page and the page's
Interrupt stops it (the HTTP call then says so); a training started in the page is reported by /progress and
stopped by POST /interrupt."""
import re
import threading

import pytest
import requests

from helpers_browser import (browser_page, fill_train_form, open_train_subtab, require_chromium, tmp_workspace,
                             wait_for)
from helpers_images import make_dataset
from trainer.embeddings.library import create_embedding, read_embedding_file

pytestmark = pytest.mark.browser


def test_one_job_shared_by_page_and_api(tmp_path):
    require_chromium()
    from webui.api import api_app_kwargs
    from webui.app import build_app
    from webui.job_view import CSS

    data = make_dataset(tmp_path / "data", size=(64, 64))
    ws = tmp_workspace(tmp_path)
    model = ws.model
    create_embedding(model.tokenizer, model.text_encoder, "shared", init_text="cat",
                     embeddings_dir=ws.folders.embeddings_dir, checkpoint_hash=model.checkpoint_hash)
    demo = build_app(ws)
    demo.queue(default_concurrency_limit=2)
    demo.launch(prevent_thread_lock=True, quiet=True, css=CSS, footer_links=[], app_kwargs=api_app_kwargs(ws))
    api = demo.local_url.rstrip("/") + "/sdapi/v1"
    try:
        with browser_page(demo.local_url) as page:
            open_train_subtab(page, "Train")
            progress = page.locator("#ti_progress")

            # 1. started over HTTP: the idle page picks it up and draws its steps; the page's Interrupt stops it
            answer = {}
            body = {"embedding_name": "shared", "data_root": str(data), "log_directory": str(tmp_path / "logs"),
                    "steps": 100000, "create_image_every": 0, "save_embedding_every": 0, "training_width": 64,
                    "training_height": 64}
            call = threading.Thread(target=lambda: answer.update(
                response=requests.post(api + "/train/embedding", json=body, timeout=300)))
            call.start()
            wait_for(lambda: re.search(r"Step [1-9]\d*/100000", progress.inner_text()), what="API job in the page")
            assert "Training embedding shared" in progress.inner_text()
            page.locator("#train_interrupt_training").click()
            call.join(timeout=120)
            info = answer["response"].json()["info"]
            step = read_embedding_file(tmp_path / "embeddings" / "shared.pt").step
            assert info.startswith("train embedding interrupted: ") and f"interrupted at {step} steps" in info
            wait_for(lambda: f"Training interrupted at {step} steps" in
                     page.locator("#ti_output textarea").input_value(), what="the page's closing message")

            # 2. started in the page: /progress reports it, POST /interrupt stops it
            page.locator("#train_embedding input").click()
            page.get_by_role("option", name="shared").click()
            fill_train_form(page, data, tmp_path / "logs", steps=100000, preview_every=0, save_every=0)
            page.locator("#train_train_embedding").click()
            wait_for(lambda: requests.get(api + "/progress", timeout=30).json()["state"]["job_no"] > step,
                     what="the page's job in /progress")
            state = requests.get(api + "/progress", timeout=30).json()["state"]
            assert state["job"] == "train-embedding" and state["job_count"] == 100000
            assert requests.post(api + "/interrupt", timeout=30).json() == {}
            wait_for(lambda: "Training interrupted at" in page.locator("#ti_output textarea").input_value(),
                     what="interrupted in the page")
            assert requests.get(api + "/progress", timeout=30).json()["state"]["interrupted"] is True
    finally:
        demo.close()
