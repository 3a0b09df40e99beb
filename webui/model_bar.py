"""The checkpoint picker above the tabs: the checkpoint list, its refresh button and what is loaded.

A successful switch writes the loaded model's name into `c.loaded` (None when the switch was refused); the tabs
whose defaults follow the model (sizes, the embedding list, the hypernetwork modules) chain on the switch event
and read it.
"""
from functools import partial
from types import SimpleNamespace

import gradio as gr

from common.errors import UserError


def build(ws) -> SimpleNamespace:
    ws.model  # loaded first (the demo model unless one was given): the picker shows it
    c = SimpleNamespace()
    with gr.Row():
        c.checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=ws.checkpoints(),
                                   value=ws.model_name, elem_id="setting_sd_model_checkpoint", scale=4)
        c.refresh = gr.Button("↻", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
        c.status = gr.Markdown(model_caption(ws), elem_id="model_status")
    c.loaded = gr.State(None)  # the model a switch just loaded; None when it was refused
    return c


def wire(ws, c, page_load):
    """Attach the picker's events; returns the switch event, for the tabs that follow the loaded model."""
    c.refresh.click(partial(refresh_checkpoints, ws), None, c.checkpoint)
    page_load(partial(show_loaded, ws, c), None, [c.checkpoint, c.status], show_progress="hidden")
    return c.checkpoint.change(partial(switch_checkpoint, ws, c), c.checkpoint, [c.checkpoint, c.status, c.loaded],
                               api_name="switch_checkpoint")


def switch_checkpoint(ws, c, spec, progress=gr.Progress()) -> dict:
    """Load the checkpoint; a refusal keeps the loaded model and says why in the caption."""
    progress(0, desc=f"Loading {spec}...")
    try:
        model = ws.load_model(spec)
    except UserError as e:
        return {c.checkpoint: gr.update(value=ws.model_name), c.status: f"**Error:** {e}", c.loaded: None}
    return {c.checkpoint: gr.update(value=ws.model_name), c.status: model_caption(ws), c.loaded: model.name}


def refresh_checkpoints(ws):
    return gr.Dropdown(choices=ws.checkpoints())


def show_loaded(ws, c) -> dict:
    """A new or reloaded page: files may have appeared, and another page (or the API) may have switched models."""
    return {c.checkpoint: gr.Dropdown(choices=ws.checkpoints(), value=ws.model_name), c.status: model_caption(ws)}


def model_caption(ws) -> str:
    model = ws.loaded_model
    if model is None:
        return "No model loaded."
    return (f"Loaded **{model.name}** [{model.checkpoint_hash}] on {model.device} "
            f"({model.family}, text width {model.text_width}, {model.prediction_type})")
