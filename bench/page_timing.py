"""What a user sees of a training run in the page, timed in Chromium: seconds from pressing Train Embedding to the
first loss line drawn in the chart, and how often the page updates while the run makes previews every N steps.

    python bench/page_timing.py [--photo-size 512] [--steps 300] [--preview-every 5] [--window 15] [--runs 2]

Serves the real page (webui.app.build_app) on the demo model in a temporary data folder holding four real photos
(scikit-image's) at --photo-size plus one broken file, and drives it with Debian's Chromium. Each run is a fresh
embedding. "Drawn" means a line mark of the chart with a visible stroke and a length over 20 px. Updates are
counted in the page: distinct texts of the progress box, chart redraws and preview gallery changes, per second,
over --window seconds of the running job.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHROMIUM = "/usr/bin/chromium"
LINES_JS = """() => [...document.querySelectorAll('#ti_loss_plot g.mark-line path')]
    .filter(p => !['', 'none'].includes(getComputedStyle(p).stroke) && p.getTotalLength() > 20).length"""
WATCH_JS = """() => {
    // sampled every 50 ms: what the user sees change (Gradio's own status overlays are left out)
    const counts = {progress: 0, chart: 0, gallery: 0}; window.__counts = counts;
    const seen = {};
    const views = {
        progress: () => (document.querySelector('#ti_progress .ti-progress') || {}).innerText || '',
        chart: () => [...document.querySelectorAll('#ti_loss_plot g.mark-line path')]
            .map(p => p.getAttribute('d')).join('|'),
        gallery: () => [...document.querySelectorAll('#ti_gallery img')].map(i => i.src).join('|'),
    };
    for (const k in views) seen[k] = views[k]();
    window.__watch = setInterval(() => {
        for (const k in views) { const v = views[k](); if (v !== seen[k]) { seen[k] = v; counts[k]++; } }
    }, 50);
}"""


def make_data(folder: Path, size: int):
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = folder / "photos"
    photos.mkdir(parents=True)
    for i, name in enumerate(("astronaut", "coffee", "chelsea", "rocket")):
        image = Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB").resize((size, size))
        image.save(photos / f"{i:05}-0-{name}.png")
        (photos / f"{i:05}-0-{name}.txt").write_text(f"a photo of a {name}\n")
    (photos / "broken.png").write_bytes(b"not an image")
    return photos


def fill(page, elem_id, value):
    box = page.locator(f"#{elem_id} textarea, #{elem_id} input").first
    box.fill(str(value))
    box.press("Tab")


def one_run(page, name, photos, args):
    page.get_by_role("tab", name="Train", exact=True).first.click()
    page.get_by_role("tab", name="Create embedding", exact=True).last.click()
    fill(page, "train_new_embedding_name", name)
    page.locator("#train_create_embedding").click()
    wait(lambda: "Created:" in page.locator("#ti_output textarea").input_value(), 60)
    page.get_by_role("tab", name="Train", exact=True).last.click()
    page.locator("#train_embedding input").click()
    page.get_by_role("option", name=name).click()
    fill(page, "train_dataset_directory", photos)
    fill(page, "train_steps", args.steps)
    fill(page, "train_create_image_every", args.preview_every)
    fill(page, "train_save_embedding_every", args.preview_every)
    for elem_id in ("train_training_width", "train_training_height"):
        fill(page, elem_id, args.train_size)
    page.locator("#train_train_embedding").scroll_into_view_if_needed()
    pressed = time.perf_counter()
    page.locator("#train_train_embedding").click()
    # this run's chart: the previous run's lines stay until the new job's first update clears them
    drawn = wait(lambda: f"Training embedding {name} " in page.locator("#ti_progress").inner_text()
                 and page.evaluate(LINES_JS) >= 2, 300) - pressed
    page.evaluate(WATCH_JS)
    def step():
        text = page.locator("#ti_progress .ti-progress").inner_text()
        return int((text.split("Step ")[1:] or ["0/"])[0].split("/")[0])

    step0, start = step(), time.perf_counter()
    time.sleep(args.window)
    counts, elapsed = page.evaluate("() => window.__counts"), time.perf_counter() - start
    steps = step() - step0
    page.locator("#train_interrupt_training").click()
    wait(lambda: "interrupted" in page.locator("#ti_output textarea").input_value(), 120)
    return drawn, {k: v / elapsed for k, v in counts.items()}, steps / elapsed


def wait(condition, timeout):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if condition():
            return time.perf_counter()
        time.sleep(0.05)
    raise SystemExit("timed out")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photo-size", type=int, default=512)
    parser.add_argument("--train-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=100000)
    parser.add_argument("--preview-every", type=int, default=5)
    parser.add_argument("--window", type=float, default=15.0)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--switch-interval", type=float, default=None,
                        help="sys.setswitchinterval for the served app (Python's default is 0.005 s)")
    args = parser.parse_args()
    if args.switch_interval:
        sys.setswitchinterval(args.switch_interval)

    from playwright.sync_api import sync_playwright

    from trainer.workspace import Folders, Workspace
    from webui.app import build_app
    from webui.job_view import CSS

    with tempfile.TemporaryDirectory() as tmp:
        photos = make_data(Path(tmp), args.photo_size)
        ws = Workspace(Folders.under(tmp), "cpu")
        demo = build_app(ws)
        demo.queue(default_concurrency_limit=2)
        demo.launch(prevent_thread_lock=True, quiet=True, css=CSS, footer_links=[])
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.set_default_timeout(60_000)
                page.goto(demo.local_url)
                results = [one_run(page, f"bench-{i}", photos, args) for i in range(args.runs)]
                browser.close()
        finally:
            demo.close()
    print(f"photos {args.photo_size} px, training {args.train_size} px, previews every {args.preview_every} steps, "
          f"{args.window:.0f} s window, {args.runs} runs")
    for i, (drawn, rates, steps) in enumerate(results):
        print(f"run {i + 1}: press -> first loss line drawn {drawn:.2f} s; page updates/s: progress "
              f"{rates['progress']:.2f}, chart {rates['chart']:.2f}, previews {rates['gallery']:.2f}; "
              f"training {steps:.2f} steps/s")
    print(f"median press -> first line drawn: {statistics.median(r[0] for r in results):.2f} s")


if __name__ == "__main__":
    main()
