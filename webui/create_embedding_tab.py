"""Train > Create embedding: name, initialization text, vectors per token, overwrite.

The name of the embedding created last goes into `c.created` (None when creating failed): the Train subtab's
Embedding list follows it (connected by app.py).
"""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from common.errors import UserError

from .hints import page_message


def build() -> SimpleNamespace:
    with gr.Column():
        name = gr.Textbox(label="Name", elem_id="train_new_embedding_name")
        init_text = gr.Textbox(label="Initialization text", value="*", elem_id="train_initialization_text")
        vectors = gr.Slider(label="Number of vectors per token", minimum=1, maximum=75, step=1, value=1,
                            elem_id="train_nvpt",
                            info="How many of a prompt's 75 token places the embedding's word takes: more can learn "
                                 "more detail but need more images and steps; 1 to 4 is usual.")
        overwrite = gr.Checkbox(label="Overwrite Old Embedding", value=False, elem_id="train_overwrite_old_embedding")
        file_format = gr.Radio(label="File format", choices=[(".pt (the reference's)", "pt"),
                                                             (".safetensors", "safetensors")],
                               value="pt", elem_id="train_embedding_file_format",
                               info="SDXL models: always .safetensors with clip_l and clip_g")
        button = gr.Button("Create embedding", variant="primary", elem_id="train_create_embedding")
    created = gr.State(None)
    return SimpleNamespace(name=name, init_text=init_text, vectors=vectors, overwrite=overwrite,
                           file_format=file_format, button=button, created=created,
                           inputs=[name, init_text, vectors, overwrite, file_format])


def wire(ws, c, shared):
    """Attach the Create button; returns its event, for what follows a created embedding."""
    return c.button.click(partial(on_create, ws, c, shared), c.inputs,
                          [shared.out.output, shared.out.error, c.created])


def on_create(ws, c, shared, name, init_text, vectors, overwrite, file_format) -> dict:
    """Create embedding: the file's path in the output box, or the reason it was not made in the error box."""
    try:
        path = create(ws, name, init_text, vectors, overwrite, file_format)
    except UserError as e:
        return {shared.out.output: "", shared.out.error: page_message(e), c.created: None}
    return {shared.out.output: f"Created: {path.resolve()}", shared.out.error: "", c.created: path.stem}


def create(ws, name, init_text, vectors, overwrite, file_format="pt") -> Path:
    """Create the embedding file and return its path (UserError on bad input)."""
    from trainer.embeddings.library import create_embedding

    model = ws.model
    path = create_embedding(model.tokenizer, model.text_encoder, name, init_text=init_text,
                            num_vectors=int(vectors), overwrite=bool(overwrite),
                            embeddings_dir=ws.folders.embeddings_dir, checkpoint_hash=model.checkpoint_hash,
                            checkpoint_name=model.name, file_format=file_format,
                            text_encoder_2=model.text_encoder_2)  # SDXL: clip_l + clip_g, as .safetensors
    return Path(path)
