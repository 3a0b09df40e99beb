"""Train > Preprocess images: the reference's controls, plus "Review captions" (edit the captions of any
dataset folder before training).

`build()` lays the subtab out and returns its components (defaults: PreprocessConfig's; the size: the loaded
model's native size); `wire(ws, c, shared)` attaches the events. Preprocessing runs as the workspace's background
job; the page's job timer draws its progress in the output column. When a preprocessing job ends, its destination
is loaded into "Review captions".
"""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from preprocess.caption import DEFAULT_BLIP_DIR
from preprocess.captions_review import caption_of, list_images, save_caption, thumbnail
from preprocess.pipeline import PreprocessConfig
from common.errors import UserError

from .hints import page_message
from .output_column import interrupt_job

CAPTION_ACTIONS = ("ignore", "copy", "prepend", "append")
OBJECTIVES = ("Maximize area", "Minimize error")
PAGE_SIZE = 48  # gallery thumbnails per page
VIEW_SIZE = 768  # the selected image is shown from a copy this large at most
LABEL_CHARS = 60  # gallery captions are cut to this length


def build(size: int = 512) -> SimpleNamespace:
    """`size`: the default width and height (the loaded model's native size)."""
    defaults = PreprocessConfig()
    c = SimpleNamespace()
    c.src = gr.Textbox(label="Source directory", elem_id="train_process_src")
    c.dst = gr.Textbox(label="Destination directory", elem_id="train_process_dst")
    c.width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=size, elem_id="train_process_width")
    c.height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=size,
                         elem_id="train_process_height")
    c.caption_action = gr.Dropdown(label="Existing Caption txt Action", value=defaults.caption_action,
                                   choices=list(CAPTION_ACTIONS),
                                   elem_id="train_preprocess_txt_action")
    with gr.Row():
        c.keep_original_size = gr.Checkbox(label="Keep original size", value=defaults.keep_original_size,
                                           elem_id="train_process_keep_original_size")
        c.flip = gr.Checkbox(label="Create flipped copies", value=defaults.flip, elem_id="train_process_flip")
        c.split = gr.Checkbox(label="Split oversized images", value=defaults.split,
                              elem_id="train_process_split")
        c.focal_crop = gr.Checkbox(label="Auto focal point crop", value=defaults.focal_crop,
                                   elem_id="train_process_focal_crop")
        c.autosize = gr.Checkbox(label="Auto-sized crop", value=defaults.autosize,
                                 elem_id="train_process_multicrop")
        c.overwrite = gr.Checkbox(label="Overwrite earlier outputs", value=defaults.overwrite,
                                  elem_id="train_process_overwrite",
                                  info="Off: numbering continues after the files already in the destination")
        c.blip = gr.Checkbox(label="Use BLIP for caption", value=bool(defaults.caption),
                             elem_id="train_process_caption")
    with gr.Row(visible=defaults.split) as c.split_row:
        c.split_threshold = gr.Slider(label="Split image threshold", value=defaults.split_threshold, minimum=0.0,
                                      maximum=1.0, step=0.05, elem_id="train_process_split_threshold")
        c.overlap_ratio = gr.Slider(label="Split image overlap ratio", value=defaults.overlap_ratio, minimum=0.0,
                                    maximum=0.9, step=0.05, elem_id="train_process_overlap_ratio")
    with gr.Row(visible=defaults.focal_crop) as c.focal_row:
        c.face_weight = gr.Slider(label="Focal point face weight", value=defaults.face_weight, minimum=0.0,
                                  maximum=1.0, step=0.05, elem_id="train_process_focal_crop_face_weight")
        c.entropy_weight = gr.Slider(label="Focal point entropy weight", value=defaults.entropy_weight, minimum=0.0,
                                     maximum=1.0, step=0.05, elem_id="train_process_focal_crop_entropy_weight")
        c.edges_weight = gr.Slider(label="Focal point edges weight", value=defaults.edges_weight, minimum=0.0,
                                   maximum=1.0, step=0.05, elem_id="train_process_focal_crop_edges_weight")
        c.focal_debug = gr.Checkbox(label="Create debug image", value=defaults.focal_debug,
                                    elem_id="train_process_focal_crop_debug")
    with gr.Column(visible=defaults.autosize) as c.autosize_col:
        gr.Markdown("Each image is center-cropped with an automatically chosen width and height.")
        with gr.Row():
            c.min_dim = gr.Slider(minimum=64, maximum=2048, step=8, label="Dimension lower bound",
                                  value=defaults.min_dim, elem_id="train_process_multicrop_mindim")
            c.max_dim = gr.Slider(minimum=64, maximum=2048, step=8, label="Dimension upper bound",
                                  value=defaults.max_dim, elem_id="train_process_multicrop_maxdim")
        with gr.Row():
            c.min_area = gr.Slider(minimum=64 * 64, maximum=2048 * 2048, step=1, label="Area lower bound",
                                   value=defaults.min_area, elem_id="train_process_multicrop_minarea")
            c.max_area = gr.Slider(minimum=64 * 64, maximum=2048 * 2048, step=1, label="Area upper bound",
                                   value=defaults.max_area, elem_id="train_process_multicrop_maxarea")
        with gr.Row():
            c.objective = gr.Radio(list(OBJECTIVES), value=defaults.objective, label="Resizing objective",
                                   elem_id="train_process_multicrop_objective")
            c.error_threshold = gr.Slider(minimum=0, maximum=1, step=0.01, label="Error threshold",
                                          value=defaults.error_threshold, elem_id="train_process_multicrop_threshold")
    with gr.Row(visible=bool(defaults.caption)) as c.blip_row:
        c.blip_model = gr.Textbox(label="BLIP model folder", value=str(DEFAULT_BLIP_DIR), scale=3,
                                  elem_id="train_process_blip_model")
        c.beams = gr.Number(label="Number of beams", value=defaults.beams, precision=0, minimum=1,
                            elem_id="train_process_blip_beams")
        c.min_length = gr.Number(label="Minimum caption length", value=defaults.min_length, precision=0, minimum=0,
                                 elem_id="train_process_blip_min_length")
        c.max_length = gr.Number(label="Maximum caption length", value=defaults.max_length, precision=0, minimum=0,
                                 elem_id="train_process_blip_max_length")
    with gr.Row():
        gr.HTML(value="", padding=False)
        c.interrupt = gr.Button("Interrupt", elem_id="train_interrupt_preprocessing")
        c.run = gr.Button("Preprocess", variant="primary", elem_id="train_run_preprocess")
    c.live = gr.HTML(elem_id="preprocess_live_status")  # image i/N beside the button
    build_review(c)
    c.form = [  # (PreprocessConfig field, component), in the order the Preprocess handler receives them
        ("src", c.src), ("dst", c.dst), ("width", c.width), ("height", c.height),
        ("caption_action", c.caption_action), ("keep_original_size", c.keep_original_size), ("flip", c.flip),
        ("split", c.split), ("split_threshold", c.split_threshold), ("overlap_ratio", c.overlap_ratio),
        ("focal_crop", c.focal_crop), ("face_weight", c.face_weight), ("entropy_weight", c.entropy_weight),
        ("edges_weight", c.edges_weight), ("focal_debug", c.focal_debug), ("autosize", c.autosize),
        ("min_dim", c.min_dim), ("max_dim", c.max_dim), ("min_area", c.min_area), ("max_area", c.max_area),
        ("objective", c.objective), ("error_threshold", c.error_threshold), ("caption", c.blip),
        ("blip_model", c.blip_model), ("beams", c.beams), ("min_length", c.min_length),
        ("max_length", c.max_length), ("overwrite", c.overwrite),
    ]
    return c


def build_review(c: SimpleNamespace) -> None:
    """The "Review captions" accordion: folder, paged thumbnail gallery, the selected image and its caption."""
    with gr.Accordion("Review captions", open=False, elem_id="train_review_captions") as c.review:
        with gr.Row():
            c.review_folder = gr.Textbox(label="Folder to review", placeholder="A folder of images and .txt captions",
                                         scale=4, elem_id="train_review_folder")
            c.review_load = gr.Button("Load", scale=0, min_width=80, elem_id="train_review_load")
        c.review_status = gr.Markdown(elem_id="train_review_status")
        c.review_gallery = gr.Gallery(label="Images", columns=5, height=300, allow_preview=False,
                                      object_fit="cover", buttons=[], elem_id="train_review_gallery")
        with gr.Row():
            c.review_prev_page = gr.Button("Previous page", size="sm", elem_id="train_review_prev_page")
            c.review_next_page = gr.Button("Next page", size="sm", elem_id="train_review_next_page")
        with gr.Row():
            c.review_image = gr.Image(label="Selected image", interactive=False, height=320, buttons=[],
                                      elem_id="train_review_image")
            with gr.Column(scale=2):
                c.review_name = gr.Markdown("Select an image above.", elem_id="train_review_name")
                c.review_caption = gr.Textbox(label="Caption", lines=4, elem_id="train_review_caption")
                with gr.Row():
                    c.review_prev = gr.Button("Previous", min_width=80, elem_id="train_review_prev")
                    c.review_next = gr.Button("Next", min_width=80, elem_id="train_review_next")
                    c.review_save = gr.Button("Save caption", variant="primary", min_width=120,
                                              elem_id="train_review_save")
    c.review_state = gr.State(None)  # {"folder": str, "names": [file names], "page": int, "index": int | None}
    c.review_job = gr.State(None)  # id of the preprocessing job whose destination was loaded last


def config_from_form(values: dict) -> PreprocessConfig:
    """The PreprocessConfig for the form's values (validated by the engine when the job starts)."""
    values = dict(values)
    values["caption"] = "blip" if values.get("caption") else ""
    folder = str(values.get("blip_model") or "").strip()
    # The default folder means "models/BLIP, else a BLIP model in the Hugging Face cache" (the engine's None).
    values["blip_model"] = None if not folder or Path(folder) == DEFAULT_BLIP_DIR else folder
    return PreprocessConfig(**values)


def wire(ws, c: SimpleNamespace, shared) -> None:
    """Attach the tab's events. `shared`: the output column, the job timer, the checkpoint switch."""
    c.run.click(partial(start_preprocess, ws, c, shared), {component for _, component in c.form},
                [shared.out.output, shared.out.error, shared.job_timer])
    c.interrupt.click(partial(interrupt_job, ws), None, shared.out.output, queue=False)
    for box, extra in ((c.split, c.split_row), (c.focal_crop, c.focal_row), (c.autosize, c.autosize_col),
                       (c.blip, c.blip_row)):
        box.change(show_options, box, extra, queue=False, show_progress="hidden")
    shared.model_switched.then(partial(follow_model, ws, c), shared.loaded_model, [c.width, c.height],
                               show_progress="hidden")
    wire_review(ws, c, shared.out)


def start_preprocess(ws, c, shared, values: dict) -> dict:
    """Preprocess: start the job (its progress is drawn by the job timer), or say why not."""
    try:
        job = ws.start_preprocess(config_from_form({key: values[component] for key, component in c.form}))
    except UserError as e:
        return {shared.out.output: "", shared.out.error: page_message(e)}
    return {shared.out.output: f"{job.title}...", shared.out.error: "", shared.job_timer: gr.Timer(active=True)}


def show_options(ticked: bool):
    """A ticked option (split, focal crop, auto-size, BLIP) shows its settings."""
    return gr.update(visible=ticked)


def follow_model(ws, c, loaded) -> dict:
    """After a checkpoint switch: Width and Height move to the new model's native size."""
    if not loaded:
        return gr.skip()  # nothing changes
    return {c.width: ws.model.native_size, c.height: ws.model.native_size}


def wire_review(ws, c: SimpleNamespace, out: SimpleNamespace) -> None:
    view = review_outputs(c)
    editing = [c.review_state, c.review_caption]
    c.dst.change(lambda folder: folder, c.dst, c.review_folder, queue=False, show_progress="hidden")
    for trigger in (c.review_load.click, c.review_folder.submit):
        trigger(partial(load_folder, c), c.review_folder, view)
    c.review_prev_page.click(partial(show_page, c, delta=-1), c.review_state, view, show_progress="hidden")
    c.review_next_page.click(partial(show_page, c, delta=+1), c.review_state, view, show_progress="hidden")

    def on_select(state, text, evt: gr.SelectData):  # (Gradio finds the event's data by this annotation)
        return select_image(c, state, text, evt.index)

    c.review_gallery.select(on_select, editing, view, show_progress="hidden")
    c.review_prev.click(partial(step_image, c, delta=-1), editing, view, show_progress="hidden")
    c.review_next.click(partial(step_image, c, delta=+1), editing, view, show_progress="hidden")
    c.review_save.click(partial(save_current, c), editing, view, show_progress="hidden")
    out.output.change(partial(review_finished_job, ws, c), c.review_job,
                      [c.review_job, c.review_folder, c.review] + view, show_progress="hidden")


def review_outputs(c) -> list:
    """What the review handlers write: the review state, thumbnails, status line, image, its name and caption."""
    return [c.review_state, c.review_gallery, c.review_status, c.review_image, c.review_name, c.review_caption]


def review_finished_job(ws, c, seen_job) -> dict:
    """When the output text changes because a preprocessing job ended, review its destination."""
    job = ws.current_job()
    result = getattr(getattr(job, "result", None), "result", None)
    if job is None or job.kind != "preprocess" or job.running or job.id == seen_job or result is None:
        return gr.skip()  # nothing changes
    folder = str(result.destination)
    return {c.review_job: job.id, c.review_folder: folder, c.review: gr.Accordion(open=True),
            **load_folder(c, folder)}


# --- review handlers: each returns what changes among review_outputs(c) -----------------------------------------
def load_folder(c, folder) -> dict:
    try:
        names = [path.name for path in list_images(folder)]
    except UserError as e:
        return {c.review_state: None, c.review_gallery: [], c.review_status: f"**Error:** {e}", c.review_image: None,
                c.review_name: "Select an image above.", c.review_caption: ""}
    state = {"folder": str(Path(folder).expanduser().resolve()), "names": names, "page": 0,
             "index": 0 if names else None}
    return _view(c, state, "" if names else "No images in this folder.")


def show_page(c, state, delta: int) -> dict:
    if not state:
        return _no_folder(c)
    page = min(max(state["page"] + delta, 0), _page_count(state) - 1)
    if page == state["page"]:
        return gr.skip()  # nothing changes
    index = page * PAGE_SIZE if state["names"] else None  # the page's first image is selected
    return _view(c, {**state, "page": page, "index": index})


def select_image(c, state, text, clicked: int) -> dict:
    """The thumbnail at `clicked` (on the current page) chosen in the gallery."""
    if not state or not state["names"]:
        return _no_folder(c)
    index = min(state["page"] * PAGE_SIZE + clicked, len(state["names"]) - 1)
    return _view(c, {**state, "index": index}, _unsaved(state, text), gallery=False)


def step_image(c, state, text: str | None = None, delta: int = +1) -> dict:
    if not state or not state["names"]:
        return _no_folder(c)
    index = 0 if state["index"] is None else min(max(state["index"] + delta, 0), len(state["names"]) - 1)
    page = index // PAGE_SIZE
    return _view(c, {**state, "index": index, "page": page}, _unsaved(state, text), gallery=page != state["page"])


def save_current(c, state, caption) -> dict:
    if not state or state["index"] is None:
        return {c.review_status: "Select an image first."}
    try:
        saved = save_caption(Path(state["folder"]) / state["names"][state["index"]], caption)
    except UserError as e:
        return {c.review_status: f"**Error:** {e}"}
    return _view(c, state, f"Saved {saved.name}.", image=False)


def _view(c, state: dict, message: str = "", gallery: bool = True, image: bool = True) -> dict:
    """Outputs for `state`: the current page of thumbnails, a status line and the selected image."""
    folder, names, page, index = Path(state["folder"]), state["names"], state["page"], state["index"]
    status = f"{len(names)} images in {folder}, page {page + 1} of {_page_count(state)}."
    status = f"{message} {status}".strip()
    first = page * PAGE_SIZE
    on_page = index - first if index is not None and 0 <= index - first < PAGE_SIZE else None
    if gallery:
        items = [(str(thumbnail(folder / name)), _label(folder / name)) for name in names[first:first + PAGE_SIZE]]
        items = gr.update(value=items, selected_index=on_page)
    else:
        items = gr.update(selected_index=on_page)  # moves the highlight only
    shown = {c.review_state: state, c.review_gallery: items, c.review_status: status}
    if index is None:
        return {**shown, c.review_image: None, c.review_name: "Select an image above.", c.review_caption: ""}
    path = folder / names[index]
    if image:
        shown[c.review_image] = str(thumbnail(path, VIEW_SIZE))
    caption = caption_of(path)
    note = "" if caption.has_caption_file else " (no caption file yet)"
    return {**shown, c.review_name: f"**{path.name}**, {index + 1} of {len(names)}{note}",
            c.review_caption: caption.caption}


def _unsaved(state: dict, text) -> str:
    """A warning when the caption box held edits that were not saved before moving to another image."""
    if state["index"] is None or text is None:
        return ""
    path = Path(state["folder"]) / state["names"][state["index"]]
    if (text or "").strip() == caption_of(path).caption:
        return ""
    return f"The edited caption of {path.name} was not saved."


def _label(path: Path) -> str:
    text = caption_of(path).caption or "(no caption)"
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "…"


def _page_count(state: dict) -> int:
    return max(1, -(-len(state["names"]) // PAGE_SIZE))


def _no_folder(c) -> dict:
    return {c.review_state: None, c.review_status: "Load a folder first."}
