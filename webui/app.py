"""Assemble the page: checkpoint picker, txt2img tab, Train tab (subtabs + shared output column).

Each tab module lays itself out (`build`) and attaches its own events (`wire`), with top-level handlers that call
the Workspace. This file only puts them together: the layout, the page-level timers, and the hand-offs where one
tab's result feeds another's control. Long work runs in the workspace's job runner; the job timer polls it once
a second while it runs, and page load re-attaches to a running job.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from . import (create_embedding_tab, create_hypernetwork_tab, demo_dataset, model_bar, output_column, preprocess_tab,
               reattach, train_tab, txt2img_tab)

JOB_POLL_SECONDS = 1.0
JOB_WATCH_SECONDS = 2.0  # how soon an idle page notices a job started elsewhere (another tab, the HTTP API)


def build_app(ws) -> gr.Blocks:
    with gr.Blocks(title="Textual inversion trainer") as demo:
        build_page(ws, demo.load)
    return demo


def build_page(ws, page_load) -> SimpleNamespace:
    """The whole page inside the current Blocks; `page_load` is its load trigger. Returns every tab's components
    (and `shared`, what the tabs share: output column, job timer, load trigger, checkpoint switch)."""
    ws.model  # loaded before the page is built: the checkpoint and embedding lists come from it
    size = train_tab.native_size(ws)
    p = SimpleNamespace()
    p.bar = model_bar.build(ws)
    with gr.Tabs() as p.main_tabs:
        with gr.Tab("txt2img", id="txt2img"):
            p.t2i = txt2img_tab.build(size)
        with gr.Tab("Train", id="train"):
            with gr.Row():
                with gr.Column():
                    with gr.Tabs() as p.train_tabs:
                        with gr.Tab("Create embedding", id="create_embedding"):
                            p.ce = create_embedding_tab.build()
                        with gr.Tab("Create hypernetwork", id="create_hypernetwork"):
                            p.ch = create_hypernetwork_tab.build(ws)
                        with gr.Tab("Preprocess images", id="preprocess_images"):
                            p.dd = demo_dataset.build()
                            p.pp = preprocess_tab.build(size)
                        with gr.Tab("Train", id="train_embedding"):
                            p.tr = train_tab.build(ws)
                with gr.Column(elem_id="ti_output_column"):  # sticky: stays in view beside the long form
                    p.out = output_column.build()
    job_timer = gr.Timer(JOB_POLL_SECONDS, active=False)  # started by Train / Preprocess, stops when the job ends
    watch_timer = gr.Timer(JOB_WATCH_SECONDS)  # notices jobs started elsewhere

    p.shared = SimpleNamespace(out=p.out, job_timer=job_timer, load=page_load,
                               model_switched=model_bar.wire(ws, p.bar, page_load), loaded_model=p.bar.loaded)
    output_column.wire(ws, p.out, job_timer, watch_timer, page_load, live={"train": p.tr.live, "preprocess": p.pp.live})
    txt2img_tab.wire(ws, p.t2i, p.shared)
    embedding_created = create_embedding_tab.wire(ws, p.ce, p.shared)
    hypernetwork_created = create_hypernetwork_tab.wire(ws, p.ch, p.shared)
    dataset_made = demo_dataset.wire(ws, p.dd, p.shared)
    preprocess_tab.wire(ws, p.pp, p.shared)
    train_tab.wire(ws, p.tr, p.shared, p.t2i.preview_fields)
    # a reloaded page re-opens the running job's tab with its form filled from the job's settings
    reattach.wire(ws, page_load, p.main_tabs, p.train_tabs, p.tr, p.pp, p.t2i.preview_fields)

    # hand-offs: what one subtab made is chosen in the Train subtab
    embedding_created.then(partial(train_tab.select_created_embedding, ws), p.ce.created, p.tr.embedding,
                           show_progress="hidden")
    hypernetwork_created.then(partial(train_tab.select_created_hypernetwork, ws), p.ch.created, p.tr.hypernetwork,
                              show_progress="hidden")
    dataset_made.then(train_tab.use_dataset, p.dd.made, p.tr.dataset, show_progress="hidden")
    return p
