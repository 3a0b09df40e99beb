"""The txt2img tab: prompt, negative prompt, sampler, steps, CFG, seed, size, batch count, Generate; the prompt
parsed and its tokens counted as it is typed."""
import threading
from dataclasses import fields
from functools import partial
from types import SimpleNamespace

import gradio as gr

from trainer.sampling.samplers import SAMPLERS
from trainer.sampling.txt2img import Txt2ImgParams
from trainer.training.config import PreviewSettings

from . import txt2img_run
from .prompt_html import parsed_prompt_html


def build(size: int = 512) -> SimpleNamespace:
    """`size`: the default width and height (the loaded model's native size); the other defaults are
    Txt2ImgParams'."""
    defaults = Txt2ImgParams(prompt="")
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
            c.sampler = gr.Dropdown(label="Sampling method", choices=list(SAMPLERS), value=defaults.sampler,
                                    elem_id="txt2img_sampling")
            c.steps = gr.Slider(minimum=1, maximum=150, step=1, label="Sampling steps", value=defaults.steps,
                                elem_id="txt2img_steps")
            with gr.Row():
                c.width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=size,
                                    elem_id="txt2img_width")
                c.height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=size,
                                     elem_id="txt2img_height")
            c.batch_count = gr.Slider(minimum=1, maximum=16, step=1, label="Batch count", value=defaults.batch_count,
                                      elem_id="txt2img_batch_count")
            c.cfg_scale = gr.Slider(minimum=1.0, maximum=30.0, step=0.5, label="CFG Scale", value=defaults.cfg_scale,
                                    elem_id="txt2img_cfg_scale")
            with gr.Row():
                c.seed = gr.Number(label="Seed", value=defaults.seed, precision=0, elem_id="txt2img_seed", scale=4)
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
    # the fields the Train subtab's previews read ("Read parameters ... from txt2img tab"), by PreviewSettings name
    c.preview_fields = {name: getattr(c, name) for name in PREVIEW_FIELDS}
    return c


PREVIEW_FIELDS = tuple(field.name for field in fields(PreviewSettings))


def wire(ws, c, shared) -> None:
    """Attach the tab's events; `shared`: the page's load trigger and the checkpoint switch."""
    stop = threading.Event()  # this page's Interrupt for txt2img
    c.generate.click(partial(generate, ws, c, stop), c.params, [c.gallery, c.infotext, c.error, c.progress],
                     show_progress="hidden")
    c.interrupt.click(stop.set, None, None, queue=False)
    c.random_seed.click(random_seed, None, c.seed)
    gr.on([c.prompt.change, c.steps.change], partial(prompt_changed, ws, c), [c.prompt, c.steps],
          [c.parsed, c.token_counter], show_progress="hidden")
    shared.model_switched.then(partial(follow_model, ws, c), shared.loaded_model, [c.width, c.height],
                               show_progress="hidden")
    shared.load(None, None, None, js=CTRL_ENTER_JS)


def generate(ws, c, stop: threading.Event, *values):
    """Generate: the gallery, infotext, notes and a live progress line as the images are made."""
    for update in txt2img_run.generate(ws, params_from_values(*values), stop):
        yield {getattr(c, name): value for name, value in update.items()}


def prompt_changed(ws, c, prompt, steps) -> dict:
    return {c.parsed: parsed_prompt_html(ws, prompt, steps, "Parsed prompt"),
            c.token_counter: token_counter_html(ws, prompt or "")}


def random_seed() -> int:
    return -1


def follow_model(ws, c, loaded) -> dict:
    """After a checkpoint switch: Width and Height move to the new model's native size."""
    if not loaded:
        return gr.skip()  # nothing changes
    return {c.width: ws.model.native_size, c.height: ws.model.native_size}


def token_counter_html(ws, prompt: str) -> str:
    from trainer.prompts.conditioning import PromptEncoder

    model = ws.model
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, ws.embedding_vectors())
    used, limit = encoder.count_tokens(prompt)
    return f"<span title='tokens used / chunk limit'>{used}/{limit}</span>"


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
