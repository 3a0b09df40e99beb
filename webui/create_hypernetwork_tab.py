"""Train > Create hypernetwork: name, modules, layer structure, activation, initialisation, layer norm, dropout."""
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from trainer.hypernetworks.network import (ACTIVATIONS, DEFAULT_DROPOUT_STRUCTURE, DEFAULT_LAYER_STRUCTURE, WEIGHT_INITS,
                                  default_sizes, size_choices)


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
           overwrite) -> str:
    """Create the file; returns the reference's "Created: <path>" message (raises UserError on bad input)."""
    from trainer.hypernetworks.network import create_hypernetwork

    model = ws.model
    path = create_hypernetwork(name, list(sizes or []), layer_structure=layer_structure, activation=activation,
                               weight_init=weight_init, layer_norm=bool(layer_norm), use_dropout=bool(use_dropout),
                               dropout_structure=dropout_structure, overwrite=bool(overwrite),
                               hypernetwork_dir=ws.folders.hypernetwork_dir, checkpoint_hash=model.checkpoint_hash,
                               checkpoint_name=model.name)
    return f"Created: {path}"


def wire(ws, c, out, tr, model_status, demo):
    """Create button -> file + refreshed Train dropdown; the module sizes follow the loaded checkpoint; the Train
    subtab's hypernetwork list is read afresh on page load and by its refresh button."""
    from common.errors import UserError

    from .hints import HYPERNETWORK_HINTS, page_message

    def on_create(*values):
        try:
            message = create(ws, *values)
        except UserError as e:
            return "", page_message(e, HYPERNETWORK_HINTS), gr.skip()
        created = Path(message.split(": ", 1)[1]).stem
        return message, "", choices(created)

    def choices(value=None):
        names = ws.hypernetworks()
        return gr.Dropdown(choices=names, value=value if value in names else None)

    c.button.click(on_create, c.inputs, [out.output, out.error, tr.hypernetwork])
    model_status.change(lambda: gr.CheckboxGroup(**sizes_update(ws)), None, c.sizes, show_progress="hidden")
    demo.load(lambda: choices(), None, tr.hypernetwork, show_progress="hidden")
    tr.refresh_hypernetworks.click(choices, tr.hypernetwork, tr.hypernetwork)
