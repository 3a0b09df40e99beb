"""Train > Train: every control of the reference's Train subtab (embeddings and hypernetworks share the form),
and its handlers: start training, refresh the lists, load a run's settings back into the form.

The defaults are TrainConfig's (the hypernetwork rate is the hypernetwork trainer's); Width and Height are the
loaded model's native size. Previews can read their prompt and sampling from the txt2img tab: those fields come
in as `txt2img_fields` ({PreviewSettings field: component}).
"""
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from common.errors import UserError
from trainer.training.config import CLIP_GRAD_MODES, LATENT_SAMPLING, PreviewSettings, TrainConfig
from trainer.training.hypernetwork import DEFAULT_LEARN_RATE as HYPERNETWORK_LEARN_RATE

from .output_column import interrupt_job
from .prompt_html import parsed_prompt_html


def native_size(ws) -> int:
    """The loaded model's native image side: the default Width/Height of every size control."""
    return ws.model.native_size


def build(ws) -> SimpleNamespace:
    defaults = TrainConfig(name="", dataset="")
    c = SimpleNamespace()
    with gr.Row():
        c.embedding = gr.Dropdown(label="Embedding", choices=sorted(ws.embeddings()[0]), value=None,
                                  elem_id="train_embedding", scale=4)
        c.refresh_embeddings = gr.Button("↻", elem_id="train_embedding_refresh", scale=0, min_width=40)
        c.hypernetwork = gr.Dropdown(label="Hypernetwork", choices=ws.hypernetworks(), value=None,
                                     elem_id="train_hypernetwork", scale=4)
        c.refresh_hypernetworks = gr.Button("↻", elem_id="train_hypernetwork_refresh", scale=0, min_width=40)
    with gr.Row():
        c.learn_rate = gr.Textbox(label="Embedding Learning rate", value=defaults.learn_rate,
                                  placeholder="Embedding Learning rate", elem_id="train_embedding_learn_rate",
                                  info=SCHEDULE_HINT)
        c.hypernetwork_learn_rate = gr.Textbox(label="Hypernetwork Learning rate", value=HYPERNETWORK_LEARN_RATE,
                                               placeholder="Hypernetwork Learning rate",
                                               elem_id="train_hypernetwork_learn_rate", info=SCHEDULE_HINT)
    with gr.Row():
        c.clip_grad_mode = gr.Dropdown(label="Gradient Clipping", choices=list(CLIP_GRAD_MODES),
                                       value=defaults.clip_grad_mode, elem_id="train_clip_grad_mode")
        c.clip_grad_value = gr.Textbox(placeholder="Gradient clip value", value=defaults.clip_grad_value,
                                       show_label=False, elem_id="train_clip_grad_value",
                                       info="The largest gradient value (or norm) kept; a schedule like the rate's.")
    with gr.Row():
        c.batch_size = gr.Number(label="Batch size", value=defaults.batch_size, precision=0,
                                 elem_id="train_batch_size")
        c.grad_accum = gr.Number(label="Gradient accumulation steps", value=defaults.grad_accum, precision=0,
                                 elem_id="train_gradient_step",
                                 info="Batches added up into each training step: trains like batch size × this, "
                                      "with the memory of one batch.")
    c.dataset = gr.Textbox(label="Dataset directory", placeholder="Path to directory with input images",
                           elem_id="train_dataset_directory")
    c.log_dir = gr.Textbox(label="Log directory", placeholder="Path to directory where to write outputs",
                           value=defaults.log_dir, elem_id="train_log_directory")
    with gr.Row():
        templates = ws.templates()
        c.template = gr.Dropdown(label="Prompt template", choices=templates,
                                 value=defaults.template if defaults.template in templates else None,
                                 elem_id="train_template_file", scale=4)
        c.refresh_templates = gr.Button("↻", elem_id="train_template_refresh", scale=0, min_width=40)
    c.width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=native_size(ws),
                        elem_id="train_training_width")
    c.height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=native_size(ws),
                         elem_id="train_training_height")
    c.no_resize = gr.Checkbox(label="Do not resize images", value=defaults.no_resize, elem_id="train_varsize")
    c.steps = gr.Number(label="Max steps", value=defaults.steps, precision=0, elem_id="train_steps")
    with gr.Row():
        c.preview_every = gr.Number(label="Save an image to log directory every N steps, 0 to disable",
                                    value=defaults.preview_every, precision=0, elem_id="train_create_image_every")
        c.save_every = gr.Number(label="Save a copy of embedding to log directory every N steps, 0 to disable",
                                 value=defaults.save_every, precision=0, elem_id="train_save_embedding_every")
    c.alpha_weight = gr.Checkbox(label="Use PNG alpha channel as loss weight", value=defaults.alpha_weight,
                                 elem_id="use_weight")
    c.png_embedding = gr.Checkbox(label="Save images with embedding in PNG chunks",
                                  value=defaults.png_embedding, elem_id="train_save_image_with_stored_embedding")
    c.use_txt2img = gr.Checkbox(label="Read parameters (prompt, etc...) from txt2img tab when making previews",
                                value=defaults.preview is not None, elem_id="train_preview_from_txt2img")
    c.shuffle_tags = gr.Checkbox(label="Shuffle tags by ',' when creating prompts.",
                                 value=defaults.shuffle_tags, elem_id="train_shuffle_tags")
    c.tag_dropout = gr.Slider(minimum=0, maximum=1, step=0.1, label="Drop out tags when creating prompts.",
                              value=defaults.tag_dropout, elem_id="train_tag_drop_out")
    c.latent_sampling = gr.Radio(label="Choose latent sampling method", value=defaults.latent_sampling,
                                 choices=list(LATENT_SAMPLING), elem_id="train_latent_sampling_method",
                                 info="How each image is turned into latents once, before training: once = one "
                                      "random sample, kept; deterministic = the average (no noise); random = a new "
                                      "sample at every use (more variety).")
    with gr.Accordion("Speed and memory", open=False, elem_id="train_speed_memory"):
        with gr.Row():
            c.mixed_precision = gr.Dropdown(label="Mixed precision", choices=list(MIXED_PRECISION_CHOICES),
                                            value=defaults.mixed_precision, elem_id="train_mixed_precision")
            c.gradient_checkpointing = gr.Checkbox(
                label="Gradient checkpointing (less GPU memory, slower steps; embeddings only)",
                value=defaults.gradient_checkpointing, elem_id="train_gradient_checkpointing")
        c.latent_cache_dir = gr.Textbox(
            label="Latent cache directory (encoded images kept between runs; delete it to clear)",
            placeholder="<log directory>/latent_cache", value=defaults.latent_cache_dir,
            elem_id="train_latent_cache_dir")
    with gr.Row():
        c.validate_every = gr.Number(label="Validate every N steps", value=defaults.validate_every, precision=0,
                                     minimum=0, elem_id="train_validate_every",
                                     info="loss of the current vectors on a fixed set of images, noise and "
                                          "timesteps; the best step is kept as <name>-best.pt; 0 to disable")
        c.early_stop = gr.Number(label="Stop when validation has not improved for K checks",
                                 value=defaults.early_stop, precision=0, minimum=0, elem_id="train_early_stop",
                                 info="0 to disable")
        c.validation_split = gr.Number(label="Share of images held out for validation",
                                       value=defaults.validation_split, minimum=0, maximum=0.9, step=0.05,
                                       elem_id="train_validation_split",
                                       info="0: validate on the training images")
    with gr.Row():
        c.settings_file = gr.Dropdown(label="Training settings to load", choices=[], allow_custom_value=True,
                                      elem_id="train_settings_file", scale=4)
        c.load_settings = gr.Button("Load settings", elem_id="train_load_settings", scale=1)
    with gr.Row():
        c.interrupt = gr.Button("Interrupt", elem_id="train_interrupt_training")
        c.train = gr.Button("Train Embedding", variant="primary", elem_id="train_train_embedding")
        c.train_hypernetwork = gr.Button("Train Hypernetwork", variant="primary", elem_id="train_train_hypernetwork")
    c.live = gr.HTML(elem_id="train_live_status")  # step/max, loss, ETA beside the buttons
    c.form = [  # (TrainConfig field, component), in the order handlers receive their values
        ("name", c.embedding), ("learn_rate", c.learn_rate), ("clip_grad_mode", c.clip_grad_mode),
        ("clip_grad_value", c.clip_grad_value), ("batch_size", c.batch_size), ("grad_accum", c.grad_accum),
        ("dataset", c.dataset), ("log_dir", c.log_dir), ("template", c.template), ("width", c.width),
        ("height", c.height), ("no_resize", c.no_resize), ("steps", c.steps), ("preview_every", c.preview_every),
        ("save_every", c.save_every), ("alpha_weight", c.alpha_weight), ("png_embedding", c.png_embedding),
        ("shuffle_tags", c.shuffle_tags), ("tag_dropout", c.tag_dropout), ("latent_sampling", c.latent_sampling),
        ("mixed_precision", c.mixed_precision), ("gradient_checkpointing", c.gradient_checkpointing),
        ("latent_cache_dir", c.latent_cache_dir),
        ("validate_every", c.validate_every), ("early_stop", c.early_stop), ("validation_split", c.validation_split),
    ]
    return c


SCHEDULE_HINT = ("A number, or rate:step pairs like 5e-2:100, 5e-3:500, 5e-6 (0.05 until step 100, then 0.005 "
                 "until 500, then 5e-6).")
MIXED_PRECISION_CHOICES = (("device default (fp16 on a GPU, no on the CPU)", ""), ("no (fp32)", "no"),
                           ("fp16 (GPU)", "fp16"), ("bf16", "bf16"))
INTEGER_FIELDS = {"batch_size", "grad_accum", "width", "height", "steps", "preview_every", "save_every",
                  "validate_every", "early_stop"}


def wire(ws, c, shared, txt2img_fields: dict) -> None:
    """Attach the subtab's events. `shared`: the output column, the job timer, the page's load trigger and the
    checkpoint switch; `txt2img_fields`: the txt2img tab's preview fields, read by Train and filled by Load
    settings."""
    out = shared.out
    inputs = {component for _, component in c.form} | {c.hypernetwork, c.hypernetwork_learn_rate, c.use_txt2img}
    inputs |= set(txt2img_fields.values())
    for button, kind in ((c.train, "embedding"), (c.train_hypernetwork, "hypernetwork")):
        button.click(partial(start_training, ws, c, shared, txt2img_fields, kind), inputs,
                     [out.output, out.error, shared.job_timer])
    c.interrupt.click(partial(interrupt_job, ws), None, out.output, queue=False)
    c.refresh_embeddings.click(partial(embedding_choices, ws), c.embedding, c.embedding)
    c.refresh_hypernetworks.click(partial(hypernetwork_choices, ws), c.hypernetwork, c.hypernetwork)
    c.refresh_templates.click(partial(template_choices, ws), c.template, c.template)
    c.log_dir.change(partial(settings_choices, ws), c.log_dir, c.settings_file)
    c.settings_file.focus(partial(settings_choices, ws), c.log_dir, c.settings_file)
    c.load_settings.click(partial(load_settings, ws, c, shared, txt2img_fields), c.settings_file,
                          form_outputs(c, txt2img_fields) + [out.output, out.error])
    preview_prompt = [txt2img_fields["prompt"], txt2img_fields["steps"], c.use_txt2img]
    gr.on([txt2img_fields["prompt"].change, txt2img_fields["steps"].change, c.use_txt2img.change],
          partial(show_preview_prompt, ws), preview_prompt, out.parsed_prompt, show_progress="hidden")
    shared.model_switched.then(partial(follow_model, ws, c), shared.loaded_model, [c.embedding, c.width, c.height],
                               show_progress="hidden")
    shared.load(partial(list_hypernetworks, ws), None, c.hypernetwork, show_progress="hidden")


# --- handlers ---------------------------------------------------------------------------------------------------
def start_training(ws, c, shared, txt2img_fields: dict, kind: str, values: dict) -> dict:
    """Train Embedding / Train Hypernetwork: the same form; the name and rate come from their own boxes.
    `values`: {component: value} of the form, the hypernetwork boxes and the txt2img preview fields."""
    fields = {key: values[component] for key, component in c.form}
    if kind == "hypernetwork":
        fields.update(name=values[c.hypernetwork], learn_rate=values[c.hypernetwork_learn_rate])
    preview = None
    if values[c.use_txt2img]:
        preview = preview_from_values({name: values[component] for name, component in txt2img_fields.items()})
    try:
        cfg = config_from_form(fields, preview)
        job = ws.start_training(cfg) if kind == "embedding" else ws.start_hypernetwork_training(cfg)
    except UserError as e:  # a new action: the previous result goes, this sentence is the one message
        return {shared.out.output: "", shared.out.error: str(e),
                shared.job_timer: gr.Timer(active=ws.job_running())}
    return {shared.out.output: f"{job.title}...", shared.out.error: "", shared.job_timer: gr.Timer(active=True)}


def embedding_choices(ws, value=None):
    """The embeddings in the folder now; `value` stays chosen when it is still there."""
    names = sorted(ws.embeddings()[0])
    return gr.Dropdown(choices=names, value=value if value in names else None)


def hypernetwork_choices(ws, value=None):
    names = ws.hypernetworks()
    return gr.Dropdown(choices=names, value=value if value in names else None)


def list_hypernetworks(ws):
    """A new page: the hypernetworks in the folder now (the choice is left to the page's restore)."""
    return gr.Dropdown(choices=ws.hypernetworks())


def template_choices(ws, value=None):
    return gr.Dropdown(choices=ws.templates(), value=value)


def settings_choices(ws, log_dir):
    return gr.Dropdown(choices=settings_files(ws.folders.resolve(log_dir or "textual_inversion")))


def select_created_embedding(ws, name):
    """After Create embedding: the new embedding chosen in the list (nothing changes when creating failed)."""
    return embedding_choices(ws, name) if name else gr.skip()


def select_created_hypernetwork(ws, name):
    """After Create hypernetwork: the new hypernetwork chosen in the list (nothing changes when creating failed)."""
    return hypernetwork_choices(ws, name) if name else gr.skip()


def use_dataset(folder):
    """After "Make demo dataset": the Dataset directory points at the new folder (nothing when it failed)."""
    return folder or gr.skip()


def load_settings(ws, c, shared, txt2img_fields: dict, path) -> dict:
    """Every field the settings file holds, back into the form (and the txt2img tab's preview fields)."""
    out = shared.out
    if not (path or "").strip():
        return {out.output: "", out.error: "Choose a settings file: they are listed from the log directory's runs."}
    try:
        cfg = TrainConfig.load(ws.folders.resolve(path))
    except UserError as e:
        return {out.output: "", out.error: str(e)}
    values = form_values(ws, c, txt2img_fields, cfg, settings_kind(ws.folders.resolve(path)))
    return {**values, out.output: f"Loaded settings from {path}.", out.error: ""}


def show_preview_prompt(ws, prompt, steps, follow_txt2img):
    """While previews read the txt2img tab and no job runs, the output column shows that prompt, parsed."""
    if not follow_txt2img or ws.job_running():
        return gr.skip()
    return parsed_prompt_html(ws, prompt, steps, "Parsed prompt")


def follow_model(ws, c, loaded) -> dict:
    """After a checkpoint switch: the new model's embeddings, and its native size for Width and Height."""
    if not loaded:
        return gr.skip()  # nothing changes
    size = native_size(ws)
    return {c.embedding: embedding_choices(ws), c.width: size, c.height: size}


# --- the form and TrainConfig -----------------------------------------------------------------------------------
def form_outputs(c, txt2img_fields: dict) -> list:
    """What `form_values` may write: the form, the hypernetwork boxes, the txt2img switch and preview fields."""
    return ([component for _, component in c.form] + [c.hypernetwork, c.hypernetwork_learn_rate, c.use_txt2img]
            + list(txt2img_fields.values()))


def form_values(ws, c, txt2img_fields: dict, cfg: TrainConfig, kind: str) -> dict:
    """{component: value} for every field of `cfg` (a reloaded page's running job, or Load settings): a
    hypernetwork's name and rate go to its own boxes; previews made from the txt2img tab's parameters tick that box
    and fill the txt2img fields back."""
    values = dict(zip([component for _, component in c.form], form_from_config(cfg, c.form)))
    if kind == "hypernetwork":
        del values[c.embedding], values[c.learn_rate]
        values[c.hypernetwork] = gr.Dropdown(choices=ws.hypernetworks(), value=cfg.name)
        values[c.hypernetwork_learn_rate] = cfg.learn_rate
    else:
        values[c.embedding] = embedding_choices(ws, cfg.name)
    values[c.use_txt2img] = cfg.preview is not None
    if cfg.preview is not None:
        values.update({component: getattr(cfg.preview, name) for name, component in txt2img_fields.items()})
        # 0 means "the training size"
        values[txt2img_fields["width"]] = cfg.preview.width or cfg.width
        values[txt2img_fields["height"]] = cfg.preview.height or cfg.height
    return values


def preview_from_values(values: dict) -> PreviewSettings:
    """PreviewSettings from the txt2img tab's fields, {field name: value}."""
    return PreviewSettings(prompt=values["prompt"] or "", negative_prompt=values["negative_prompt"] or "",
                           sampler=values["sampler"], steps=int(values["steps"]), cfg_scale=float(values["cfg_scale"]),
                           seed=-1 if values["seed"] is None else int(values["seed"]), width=int(values["width"]),
                           height=int(values["height"]))


def config_from_form(values: dict, preview: PreviewSettings | None) -> TrainConfig:
    values = dict(values)
    for key in INTEGER_FIELDS:
        values[key] = int(values[key] or 0)
    values["tag_dropout"] = float(values["tag_dropout"] or 0)
    values["validation_split"] = float(values["validation_split"] or 0)
    values["name"] = values["name"] or ""
    values["template"] = values["template"] or ""
    values["dataset"] = (values["dataset"] or "").strip()
    values["mixed_precision"] = values.get("mixed_precision") or ""
    values["latent_cache_dir"] = (values.get("latent_cache_dir") or "").strip()
    return TrainConfig(**values, preview=preview)


def form_from_config(cfg: TrainConfig, form) -> list:
    return [getattr(cfg, key) for key, _ in form]


def settings_kind(path) -> str:
    """"hypernetwork" for settings written by hypernetwork training, else "embedding"."""
    import json

    try:
        return json.loads(Path(path).read_text(encoding="utf-8")).get("kind") or "embedding"
    except (OSError, ValueError, AttributeError):
        return "embedding"


def settings_files(log_dir: str) -> list:
    """settings-*.json under the log directory, newest first."""
    root = Path(log_dir or "textual_inversion")
    if not root.is_dir():
        return []
    files = sorted(root.glob("*/*/settings-*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    return [str(p) for p in files[:50]]
