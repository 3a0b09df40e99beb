"""The Train tab's right-hand column, shared by its subtabs: result, error, progress, chart, gallery, prompt."""
from types import SimpleNamespace

import gradio as gr

from .job_view import SERIES_COLORS


def build() -> SimpleNamespace:
    c = SimpleNamespace()
    c.output = gr.Textbox(label="Output", interactive=False, elem_id="ti_output", lines=2)
    c.error = gr.Markdown(elem_id="ti_error")
    c.progress = gr.HTML(elem_id="ti_progress")
    # no value until the first loss arrives (see job_view.chart_frame); whole-number steps on the x axis
    c.loss_plot = gr.LinePlot(x="step", y="loss", color="series", title="Loss", elem_id="ti_loss_plot",
                              color_map=dict(SERIES_COLORS), height=260, x_axis_format="d", x_title="step")
    c.gallery = gr.Gallery(label="Previews", elem_id="ti_gallery", columns=4, height=360, format="png",
                           object_fit="contain")
    c.parsed_prompt = gr.HTML(elem_id="ti_parsed_prompt", label="Preview prompt, as parsed")
    return c
