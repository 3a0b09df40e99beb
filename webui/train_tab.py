"""Train > Train: every control of the reference's Train subtab (embeddings and hypernetworks share the form)."""
from pathlib import Path
from types import SimpleNamespace

import gradio as gr

from trainer.training.dataset import LATENT_SAMPLING
from trainer.training.config import PreviewSettings, TrainConfig


def native_size(ws) -> int:
    """The loaded model's native image side: the default Width/Height of every size control."""
    return ws.model.native_size if ws.model is not None else 512


def build(ws) -> SimpleNamespace:
    loaded = sorted(ws.embeddings()[0]) if ws.model is not None else []
    c = SimpleNamespace()
    with gr.Row():
        c.embedding = gr.Dropdown(label="Embedding", choices=loaded, value=None, elem_id="train_embedding",
                                  scale=4)
        c.refresh_embeddings = gr.Button("↻", elem_id="train_embedding_refresh", scale=0, min_width=40)
        c.hypernetwork = gr.Dropdown(label="Hypernetwork", choices=ws.hypernetworks(), value=None,
                                     elem_id="train_hypernetwork", scale=4)
        c.refresh_hypernetworks = gr.Button("↻", elem_id="train_hypernetwork_refresh", scale=0, min_width=40)
    with gr.Row():
        c.learn_rate = gr.Textbox(label="Embedding Learning rate", value="0.005",
                                  placeholder="Embedding Learning rate", elem_id="train_embedding_learn_rate",
                                  info=SCHEDULE_HINT)
        c.hypernetwork_learn_rate = gr.Textbox(label="Hypernetwork Learning rate", value="0.00001",
                                               placeholder="Hypernetwork Learning rate",
                                               elem_id="train_hypernetwork_learn_rate", info=SCHEDULE_HINT)
    with gr.Row():
        c.clip_grad_mode = gr.Dropdown(label="Gradient Clipping", choices=["disabled", "value", "norm"],
                                       value="disabled", elem_id="train_clip_grad_mode")
        c.clip_grad_value = gr.Textbox(placeholder="Gradient clip value", value="0.1", show_label=False,
                                       elem_id="train_clip_grad_value",
                                       info="The largest gradient value (or norm) kept; a schedule like the rate's.")
    with gr.Row():
        c.batch_size = gr.Number(label="Batch size", value=1, precision=0, elem_id="train_batch_size")
        c.grad_accum = gr.Number(label="Gradient accumulation steps", value=1, precision=0,
                                 elem_id="train_gradient_step",
                                 info="Batches added up into each training step: trains like batch size × this, "
                                      "with the memory of one batch.")
    c.dataset = gr.Textbox(label="Dataset directory", placeholder="Path to directory with input images",
                           elem_id="train_dataset_directory")
    c.log_dir = gr.Textbox(label="Log directory", placeholder="Path to directory where to write outputs",
                           value="textual_inversion", elem_id="train_log_directory")
    with gr.Row():
        templates = ws.templates()
        c.template = gr.Dropdown(label="Prompt template", choices=templates,
                                 value="style_filewords.txt" if "style_filewords.txt" in templates else None,
                                 elem_id="train_template_file", scale=4)
        c.refresh_templates = gr.Button("↻", elem_id="train_template_refresh", scale=0, min_width=40)
    c.width = gr.Slider(minimum=64, maximum=2048, step=8, label="Width", value=native_size(ws),
                        elem_id="train_training_width")
    c.height = gr.Slider(minimum=64, maximum=2048, step=8, label="Height", value=native_size(ws),
                         elem_id="train_training_height")
    c.no_resize = gr.Checkbox(label="Do not resize images", value=False, elem_id="train_varsize")
    c.steps = gr.Number(label="Max steps", value=100000, precision=0, elem_id="train_steps")
    with gr.Row():
        c.preview_every = gr.Number(label="Save an image to log directory every N steps, 0 to disable", value=500,
                                    precision=0, elem_id="train_create_image_every")
        c.save_every = gr.Number(label="Save a copy of embedding to log directory every N steps, 0 to disable",
                                 value=500, precision=0, elem_id="train_save_embedding_every")
    c.alpha_weight = gr.Checkbox(label="Use PNG alpha channel as loss weight", value=False, elem_id="use_weight")
    c.png_embedding = gr.Checkbox(label="Save images with embedding in PNG chunks", value=True,
                                  elem_id="train_save_image_with_stored_embedding")
    c.use_txt2img = gr.Checkbox(label="Read parameters (prompt, etc...) from txt2img tab when making previews",
                                value=False, elem_id="train_preview_from_txt2img")
    c.shuffle_tags = gr.Checkbox(label="Shuffle tags by ',' when creating prompts.", value=False,
                                 elem_id="train_shuffle_tags")
    c.tag_dropout = gr.Slider(minimum=0, maximum=1, step=0.1, label="Drop out tags when creating prompts.", value=0,
                              elem_id="train_tag_drop_out")
    c.latent_sampling = gr.Radio(label="Choose latent sampling method", value="once", choices=list(LATENT_SAMPLING),
                                 elem_id="train_latent_sampling_method",
                                 info="How each image is turned into latents once, before training: once = one "
                                      "random sample, kept; deterministic = the average (no noise); random = a new "
                                      "sample at every use (more variety).")
    with gr.Accordion("Speed and memory", open=False, elem_id="train_speed_memory"):
        with gr.Row():
            c.mixed_precision = gr.Dropdown(label="Mixed precision", choices=list(MIXED_PRECISION_CHOICES), value="",
                                            elem_id="train_mixed_precision")
            c.gradient_checkpointing = gr.Checkbox(
                label="Gradient checkpointing (less GPU memory, slower steps; embeddings only)", value=False,
                elem_id="train_gradient_checkpointing")
        c.latent_cache_dir = gr.Textbox(
            label="Latent cache directory (encoded images kept between runs; delete it to clear)",
            placeholder="<log directory>/latent_cache", value="", elem_id="train_latent_cache_dir")
    with gr.Row():
        c.validate_every = gr.Number(label="Validate every N steps", value=TrainConfig.validate_every, precision=0,
                                     minimum=0, elem_id="train_validate_every",
                                     info="loss of the current vectors on a fixed set of images, noise and "
                                          "timesteps; the best step is kept as <name>-best.pt; 0 to disable")
        c.early_stop = gr.Number(label="Stop when validation has not improved for K checks", value=0, precision=0,
                                 minimum=0, elem_id="train_early_stop", info="0 to disable")
        c.validation_split = gr.Number(label="Share of images held out for validation", value=0, minimum=0,
                                       maximum=0.9, step=0.05, elem_id="train_validation_split",
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
