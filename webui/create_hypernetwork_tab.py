"""Train > Create hypernetwork: name, modules, layer structure, activation, initialisation, layer norm, dropout.

The module sizes follow the loaded checkpoint. The name of the hypernetwork created last goes into `c.created`
(None when creating failed): the Train subtab's Hypernetwork list follows it (connected by app.py).
"""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from common.errors import UserError
from trainer.hypernetworks.network import (ACTIVATIONS, DEFAULT_DROPOUT_STRUCTURE, DEFAULT_LAYER_STRUCTURE,
                                           WEIGHT_INITS, default_sizes, size_choices)

from .hints import HYPERNETWORK_HINTS, page_message


def build(ws) -> SimpleNamespace:
    c = SimpleNamespace()
    with gr.Column():
        c.name = gr.Textbox(label="Name", elem_id="train_new_hypernetwork_name")
        c.sizes = gr.CheckboxGroup(label="Modules", elem_id="train_new_hypernetwork_sizes", **sizes_update(ws))
        c.layer_structure = gr.Textbox(DEFAULT_LAYER_STRUCTURE, label="Enter hypernetwork layer structure",
                                       placeholder="1st and last digit must be 1. ex:'1, 2, 1'",
                                       elem_id="train_new_hypernetwork_layer_structure")
        c.activation = gr.Dropdown(value="linear", choices=list(ACTIVATIONS),
                                   label="Select activation function of hypernetwork. Recommended : Swish / "
                                         "Linear(none)", elem_id="train_new_hypernetwork_activation_func")
        c.weight_init = gr.Dropdown(value="Normal", choices=list(WEIGHT_INITS),
                                    label="Select Layer weights initialization. Recommended: Kaiming for relu-like, "
                                          "Xavier for sigmoid-like, Normal otherwise",
                                    elem_id="train_new_hypernetwork_initialization_option")
        c.layer_norm = gr.Checkbox(label="Add layer normalization", elem_id="train_new_hypernetwork_add_layer_norm")
        c.use_dropout = gr.Checkbox(label="Use dropout", elem_id="train_new_hypernetwork_use_dropout")
        c.dropout_structure = gr.Textbox(DEFAULT_DROPOUT_STRUCTURE,
                                         label="Enter hypernetwork Dropout structure (or empty). Recommended : "
                                               "0~0.35 incrementing sequence: 0, 0.05, 0.15",
                                         placeholder="1st and last digit must be 0 and values should be between 0 "
                                                     "and 1. ex:'0, 0.01, 0'",
                                         elem_id="train_new_hypernetwork_dropout_structure")
        c.overwrite = gr.Checkbox(label="Overwrite Old Hypernetwork", value=False,
                                  elem_id="train_overwrite_old_hypernetwork")
        c.button = gr.Button("Create hypernetwork", variant="primary", elem_id="train_create_hypernetwork")
    c.created = gr.State(None)
    c.inputs = [c.name, c.sizes, c.layer_structure, c.activation, c.weight_init, c.layer_norm, c.use_dropout,
                c.dropout_structure, c.overwrite]
    return c


def sizes_update(ws) -> dict:
    """Choices, ticked defaults and a hint for "Modules": the loaded model's text and attention widths first."""
    model = ws.model
    sizes = default_sizes(model)
    hint = ("A module is added to every attention layer of each ticked width (the text width and the UNet's "
            "attention widths). ")
    if sizes == [768, 320, 640, 1280]:
        hint += "These are Stable Diffusion 1.x's widths."
    else:
        hint += (f"This model ({model.name}) uses {', '.join(map(str, sizes))}, ticked; the others are Stable "
                 "Diffusion's sizes and do nothing on this model.")
    return {"choices": [str(s) for s in size_choices(model)], "value": [str(s) for s in sizes], "info": hint}


def create(ws, name, sizes, layer_structure, activation, weight_init, layer_norm, use_dropout, dropout_structure,
           overwrite) -> Path:
    """Create the file and return its path (UserError on bad input)."""
    from trainer.hypernetworks.network import create_hypernetwork

    model = ws.model
    return create_hypernetwork(name, list(sizes or []), layer_structure=layer_structure, activation=activation,
                               weight_init=weight_init, layer_norm=bool(layer_norm), use_dropout=bool(use_dropout),
                               dropout_structure=dropout_structure, overwrite=bool(overwrite),
                               hypernetwork_dir=ws.folders.hypernetwork_dir, checkpoint_hash=model.checkpoint_hash,
                               checkpoint_name=model.name)


def wire(ws, c, shared):
    """Attach the Create button (returns its event, for what follows a created hypernetwork); the modules follow
    the loaded checkpoint, on a checkpoint switch and on page load (another page may have switched it)."""
    shared.model_switched.then(partial(follow_model, ws), shared.loaded_model, c.sizes, show_progress="hidden")
    shared.load(partial(modules_for_model, ws), None, c.sizes, show_progress="hidden")
    return c.button.click(partial(on_create, ws, c, shared), c.inputs,
                          [shared.out.output, shared.out.error, c.created])


def on_create(ws, c, shared, *values) -> dict:
    """Create hypernetwork: the reference's "Created: <path>", or the reason it was not made in the error box."""
    try:
        path = create(ws, *values)
    except UserError as e:
        return {shared.out.output: "", shared.out.error: page_message(e, HYPERNETWORK_HINTS), c.created: None}
    return {shared.out.output: f"Created: {path}", shared.out.error: "", c.created: Path(path).stem}


def modules_for_model(ws):
    return gr.CheckboxGroup(**sizes_update(ws))


def follow_model(ws, loaded):
    """After a checkpoint switch: the new model's module widths, ticked."""
    return modules_for_model(ws) if loaded else gr.skip()
