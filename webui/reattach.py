"""A reloaded page keeps its place: while a job runs, the page opens that job's tab with the form it was started
with (Train for training, Preprocess images for preprocessing); the output column is redrawn by the job view.
The Train form is filled by train_tab.form_values, the one Load settings uses."""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from preprocess.caption import DEFAULT_BLIP_DIR

from . import train_tab


def wire(ws, page_load, main_tabs, train_tabs, tr, pp, txt2img_fields: dict) -> None:
    """On page load, restore the running job's tab and form (and always refresh the Embedding list)."""
    view = SimpleNamespace(main_tabs=main_tabs, train_tabs=train_tabs, tr=tr, pp=pp, txt2img=txt2img_fields)
    outputs = ([main_tabs, train_tabs, *train_tab.form_outputs(tr, txt2img_fields)]
               + [component for _, component in pp.form])
    page_load(partial(restore_page, ws, view), None, outputs)


def restore_page(ws, view) -> dict:
    """The running job's tab and form; else only a fresh embedding list (files may have appeared)."""
    job = ws.current_job()
    if job is None or not job.running or job.settings is None:
        return {view.tr.embedding: train_tab.embedding_choices(ws)}
    if job.kind == "preprocess":
        return {view.main_tabs: gr.Tabs(selected="train"), view.train_tabs: gr.Tabs(selected="preprocess_images"),
                view.tr.embedding: train_tab.embedding_choices(ws), **preprocess_values(view.pp, job.settings)}
    kind = "hypernetwork" if job.kind == "train-hypernetwork" else "embedding"
    return {view.main_tabs: gr.Tabs(selected="train"), view.train_tabs: gr.Tabs(selected="train_embedding"),
            **train_tab.form_values(ws, view.tr, view.txt2img, job.settings, kind)}


def preprocess_values(pp, config) -> dict:
    """{component: value} of the Preprocess form for a PreprocessConfig."""
    values = {}
    for key, component in pp.form:
        value = getattr(config, key)
        if key == "caption":
            value = bool(value)
        elif key == "blip_model":
            value = str(value) if value else str(DEFAULT_BLIP_DIR)
        elif isinstance(value, Path):
            value = str(value)
        values[component] = value
    return values
