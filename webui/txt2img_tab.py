"""The txt2img tab: prompt, negative prompt, sampler, steps, CFG, seed, size, batch count, Generate."""
from types import SimpleNamespace

import gradio as gr

from trainer.sampling.samplers import SAMPLERS
from trainer.sampling.txt2img import Txt2ImgParams


def build(size: int = 512) -> SimpleNamespace:
    """`size`: the default width and height (the loaded model's native size)."""
    c = SimpleNamespace()
    with gr.Row():
        with gr.Column(scale=6):
            c.prompt = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                  placeholder="Prompt (Ctrl+Enter or Generate); embeddings by file name")
            c.negative_prompt = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
        with gr.Column(scale=1, min_width=160):
            c.token_counter = gr.HTML("<span>0/75</span>", elem_id="txt2img_token_counter")
            c.generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
            c.interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
    with gr.Row():
        with gr.Column():
            c.sampler = gr.Dropdown(label="Sampling method", choices=list(SAMPLERS), value="Euler a",
                                    elem_id="txt2img_sampling")
            c.steps = gr.Slider(minimum=1, maximum=150, step=1, label="Sampling steps", value=20,
                                elem_id="txt2img_steps")
            with gr.Row():
                c.width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=size,
                                    elem_id="txt2img_width")
                c.height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=size,
                                     elem_id="txt2img_height")
            c.batch_count = gr.Slider(minimum=1, maximum=16, step=1, label="Batch count", value=1,
                                      elem_id="txt2img_batch_count")
            c.cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, label="CFG Scale", value=7.0,
                                    elem_id="txt2img_cfg_scale")
            with gr.Row():
                c.seed = gr.Number(label="Seed", value=-1, precision=0, elem_id="txt2img_seed", scale=4)
                c.random_seed = gr.Button("Random", elem_id="txt2img_random_seed", scale=0, min_width=80)
            c.parsed = gr.HTML(elem_id="txt2img_parsed_prompt", label="Parsed prompt")
        with gr.Column():
            c.progress = gr.HTML(elem_id="txt2img_progress")
            c.gallery = gr.Gallery(label="Output", elem_id="txt2img_gallery", columns=2, height=420,
                                   format="png", object_fit="contain")
            c.infotext = gr.Textbox(label="Infotext", lines=4, interactive=False, elem_id="txt2img_infotext")
            c.error = gr.Markdown(elem_id="txt2img_error")
    c.params = [c.prompt, c.negative_prompt, c.sampler, c.steps, c.cfg_scale, c.seed, c.width, c.height,
                c.batch_count]
    return c


def params_from_values(prompt, negative_prompt, sampler, steps, cfg_scale, seed, width, height,
                       batch_count) -> Txt2ImgParams:
    return Txt2ImgParams(prompt=prompt or "", negative_prompt=negative_prompt or "", sampler=sampler,
                         steps=steps, cfg_scale=cfg_scale, seed=-1 if seed is None else seed, width=width,
                         height=height, batch_count=batch_count)


# Ctrl+Enter in either prompt box presses Generate, as in the reference.
CTRL_ENTER_JS = """
() => {
  document.addEventListener("keydown", (e) => {
    if (e.key !== "Enter" || !(e.ctrlKey || e.metaKey)) return;
    if (!e.target.closest || !e.target.closest("#txt2img_prompt, #txt2img_neg_prompt")) return;
    e.preventDefault();
    document.querySelector("#txt2img_generate")?.click();
  });
}
"""
