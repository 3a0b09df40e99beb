"""The Train tab's right-hand column, shared by its subtabs: result, error, progress, chart, gallery, prompt."""
from types import SimpleNamespace

import gradio as gr


def build() -> SimpleNamespace:
    c = SimpleNamespace()
    c.output = gr.Textbox(label="Output", interactive=False, elem_id="ti_output", lines=2)
    c.error = gr.Markdown(elem_id="ti_error")
    c.progress = gr.HTML(elem_id="ti_progress")
    c.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", elem_id="ti_loss_plot",
                              color_map={"raw": "#94a3b8", "smoothed": "#f97316", "validation": "#2563eb"}, height=260)
    c.gallery = gr.Gallery(label="Previews", elem_id="ti_gallery", columns=4, height=360, format="png")
    c.parsed_prompt = gr.HTML(elem_id="ti_parsed_prompt", label="Preview prompt, as parsed")
    return c
