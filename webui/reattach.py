"""A reloaded page keeps its place: while a job runs, the page opens that job's tab with the form it was started
with (Train for training, Preprocess images for preprocessing); the output column is redrawn by the job poll.
The same form filling serves "Load settings"."""
from pathlib import Path

import gradio as gr

from preprocess.caption import DEFAULT_BLIP_DIR

from . import train_tab

TXT2IMG_PREVIEW_FIELDS = ("prompt", "negative_prompt", "sampler", "steps", "cfg_scale", "seed", "width", "height")


class Restorer:
    """Which components a restore writes (`outputs`, `train_outputs`) and their values for the current job."""

    def __init__(self, ws, main_tabs, train_tabs, tr, pp, t2i, embedding_choices):
        self.ws, self.main_tabs, self.train_tabs = ws, main_tabs, train_tabs
        self.tr, self.pp, self.embedding_choices = tr, pp, embedding_choices
        self.t2i_preview = [getattr(t2i, name) for name in TXT2IMG_PREVIEW_FIELDS]
        self.train_outputs = ([component for _, component in tr.form]
                              + [tr.hypernetwork, tr.hypernetwork_learn_rate, tr.use_txt2img] + self.t2i_preview)
        self.preprocess_outputs = [component for _, component in pp.form]
        self.outputs = [main_tabs, train_tabs] + self.train_outputs + self.preprocess_outputs

    def values(self) -> list:
        """For `outputs`: the running job's tab and form; else only a fresh embedding list."""
        job = self.ws.runner.current
        skip_train = [gr.skip()] * len(self.train_outputs)
        skip_train[[key for key, _ in self.tr.form].index("name")] = self.embedding_choices()
        skip_preprocess = [gr.skip()] * len(self.preprocess_outputs)
        if job is None or not job.running or job.settings is None:
            return [gr.skip(), gr.skip()] + skip_train + skip_preprocess
        if job.kind == "preprocess":
            return [gr.Tabs(selected="train"), gr.Tabs(selected="preprocess_images")] + skip_train \
                + self.preprocess_values(job.settings)
        kind = "hypernetwork" if job.kind == "train-hypernetwork" else "embedding"
        return [gr.Tabs(selected="train"), gr.Tabs(selected="train_embedding")] \
            + self.train_values(job.settings, kind) + skip_preprocess

    def train_values(self, cfg, kind: str) -> list:
        """For `train_outputs`: every field of a TrainConfig; a hypernetwork's name and rate go to its own boxes;
        previews made from the txt2img tab's parameters tick that box and fill the txt2img fields back."""
        form_keys = [key for key, _ in self.tr.form]
        values = train_tab.form_from_config(cfg, self.tr.form)
        name_at, rate_at = form_keys.index("name"), form_keys.index("learn_rate")
        hypernetwork_values = [gr.skip(), gr.skip()]
        if kind == "hypernetwork":
            hypernetwork_values = [gr.Dropdown(choices=self.ws.hypernetworks(), value=cfg.name), cfg.learn_rate]
            values[name_at] = values[rate_at] = gr.skip()
        else:
            values[name_at] = self.embedding_choices(cfg.name)
        preview = cfg.preview
        if preview is None:
            preview_values = [False] + [gr.skip()] * len(self.t2i_preview)
        else:
            preview_values = [True] + [getattr(preview, name) for name in TXT2IMG_PREVIEW_FIELDS]
            at = TXT2IMG_PREVIEW_FIELDS.index("width")
            for i in (at, at + 1):  # 0 means "the training size"
                preview_values[1 + i] = preview_values[1 + i] or (cfg.width if i == at else cfg.height)
        return values + hypernetwork_values + preview_values

    def preprocess_values(self, config) -> list:
        values = []
        for key, _ in self.pp.form:
            value = getattr(config, key)
            if key == "caption":
                value = bool(value)
            elif key == "blip_model":
                value = str(value) if value else str(DEFAULT_BLIP_DIR)
            elif isinstance(value, Path):
                value = str(value)
            values.append(value)
        return values
