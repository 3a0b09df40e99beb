"""Train > Preprocess images > "Make a demo dataset": pictures of one concept of the demo model's toy world.

The same engine call as `python -m trainer make-demo-dataset DIR --concept ...`; on success the Train subtab's
Dataset directory points at the new folder, so a newcomer can go straight to training.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from common.errors import UserError
from trainer.toy.world import parse_concept, write_dataset


def build() -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Accordion("Make a demo dataset (pictures the demo model's toy world knows)", open=False,
                      elem_id="demo_dataset"):
        gr.Markdown("The demo model knows one coloured shape (circle, square, triangle, star) on a plain background "
                    "(red, green, blue, yellow, purple, orange, white, black). Write pictures of one such "
                    "concept, with captions, then train an embedding on them.")
        with gr.Row():
            c.concept = gr.Textbox(label="Concept", value="green square on a purple background", scale=3,
                                   elem_id="demo_dataset_concept")
            c.count = gr.Number(label="Pictures", value=20, precision=0, minimum=1, elem_id="demo_dataset_count")
        with gr.Row():
            c.folder = gr.Textbox(label="Destination directory", value="datasets/green-square", scale=3,
                                  elem_id="demo_dataset_dir")
            c.overwrite = gr.Checkbox(label="Overwrite", value=False, elem_id="demo_dataset_overwrite")
        c.button = gr.Button("Make demo dataset", elem_id="demo_dataset_make")
    c.made = gr.State(None)  # the folder written last; None when making it failed
    return c


def make(concept: str, count, folder, overwrite: bool) -> str:
    """Write the dataset into `folder` (absolute); the result sentence, or UserError with one sentence."""
    if not str(folder or "").strip():
        raise UserError("Destination directory is empty; type a folder to write the pictures into.")
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise UserError(f"The number of pictures must be a whole number, not {count!r}.") from None
    parsed = parse_concept(concept or "")
    paths = write_dataset(folder, parsed, count=count, overwrite=bool(overwrite))
    return f"Wrote {len(paths)} pictures of {parsed.describe()} with captions to {folder}."


def wire(ws, c, shared):
    """Attach the button; returns its event, for what follows a written dataset (`c.made`: its folder)."""
    return c.button.click(partial(make_dataset, ws, c, shared), [c.concept, c.count, c.folder, c.overwrite],
                          [shared.out.output, shared.out.error, c.made])


def make_dataset(ws, c, shared, concept, count, folder, overwrite) -> dict:
    """Make demo dataset; a relative folder starts in the data folder, like every path typed in the page."""
    target = ws.folders.resolve(folder.strip()) if str(folder or "").strip() else ""
    try:
        message = make(concept, count, target, overwrite)
    except UserError as e:
        return {shared.out.error: str(e), c.made: None}
    return {shared.out.output: message, shared.out.error: "", c.made: str(target)}
