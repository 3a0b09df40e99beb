"""Assemble the page: checkpoint picker, txt2img tab, Train tab (subtabs + shared output column).

Handlers stay a few lines: they build a config object and call the engine (trainer/, preprocess/). Long work
runs in the workspace's job runner; a gr.Timer polls the job once a second while it runs, and page load
re-attaches to a running job.
"""
import threading
import time

import gradio as gr

from common.errors import UserError
from trainer.prompts.view import describe_prompt
from trainer.training.config import PreviewSettings, TrainConfig

from . import (create_embedding_tab, create_hypernetwork_tab, demo_dataset, job_view, output_column, preprocess_tab,
               reattach, train_tab, txt2img_run, txt2img_tab)
from .hints import job_error, page_message
from .prompt_html import prompt_html

JOB_POLL_SECONDS = 1.0
JOB_WATCH_SECONDS = 2.0  # how soon an idle page notices a job started elsewhere (another tab, the HTTP API)


def build_app(ws) -> gr.Blocks:
    ws.model  # loaded before the page is built: the checkpoint and embedding lists come from it
    with gr.Blocks(title="Textual inversion trainer") as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=ws.checkpoints(),
                                     value=ws.model_name, elem_id="setting_sd_model_checkpoint", scale=4)
            refresh_checkpoints = gr.Button("↻", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            model_status = gr.Markdown(model_caption(ws), elem_id="model_status")
        with gr.Tabs() as main_tabs:
            with gr.Tab("txt2img", id="txt2img"):
                t2i = txt2img_tab.build(train_tab.native_size(ws))
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column():
                        with gr.Tabs() as train_tabs:
                            with gr.Tab("Create embedding", id="create_embedding"):
                                ce = create_embedding_tab.build()
                            with gr.Tab("Create hypernetwork", id="create_hypernetwork"):
                                ch = create_hypernetwork_tab.build(ws)
                            with gr.Tab("Preprocess images", id="preprocess_images"):
                                dd = demo_dataset.build()
                                pp = preprocess_tab.build(train_tab.native_size(ws))
                            with gr.Tab("Train", id="train_embedding"):
                                tr = train_tab.build(ws)
                    with gr.Column(elem_id="ti_output_column"):  # sticky: stays in view beside the long form
                        out = output_column.build()
        timer = gr.Timer(JOB_POLL_SECONDS, active=False)
        seen = gr.State(None)  # what this page already shows, so unchanged parts are not re-sent
        preview_files = job_view.PreviewFiles()  # previews encoded once, sent as files
        preprocess_tab.wire(ws, pp, out, timer)
        demo_dataset.wire(ws, dd, out, tr.dataset)
        create_hypernetwork_tab.wire(ws, ch, out, tr, model_status, demo)

        # --- helpers ------------------------------------------------------------------------------------
        def embedding_choices(value=None):
            names = sorted(ws.embeddings()[0])
            return gr.Dropdown(choices=names, value=value if value in names else None)

        def embedding_counts() -> dict:
            return {name: e.num_vectors for name, e in ws.embeddings()[0].items()}

        def render(seen_before, steps_hint=20):
            """Outputs for the current job: (output, error, progress, plot, gallery, parsed, train status,
            preprocess status, timer, seen).

            `seen` remembers what this page already shows; unchanged parts are skipped (not re-sent), and the
            error box is only written when the job's state or error changes, so a refusal message stays visible
            while the job runs. The chart is redrawn at most every `job_view.chart_interval` seconds."""
            job = ws.runner.current
            snap = job.snapshot() if job else None
            running = bool(snap and snap["state"] == "running")
            if snap is None:
                return (*[gr.skip()] * 8, gr.Timer(active=False), None)
            old = seen_before if seen_before and seen_before["id"] == snap["id"] else {}
            now = {"id": snap["id"], "state": snap["state"], "losses": len(snap["losses"]),
                   "previews": snap["previews"][-1][1] if snap["previews"] else None,  # the list is capped
                   "messages": len(snap["messages"]), "validations": len(snap["validations"]),
                   "done": snap["progress"] and snap["progress"].done, "prompt": snap["preview_prompt"], "error": snap["error"],
                   "chart": old.get("chart", -1), "chart_at": old.get("chart_at", 0.0)}
            due = time.time() - now["chart_at"] >= job_view.chart_interval(now["losses"]) or not running
            drawn = [now["losses"], now["validations"]]  # what the chart shows when it is redrawn now
            redraw_chart = now["chart"] != drawn and (due or not old)
            if redraw_chart:
                now["chart"], now["chart_at"] = drawn, time.time()
            if now == old:
                return (*[gr.skip()] * 8, gr.Timer(active=running), now)

            def changed(*keys):
                return any(old.get(k) != now[k] for k in keys)

            parsed = gr.skip()
            if snap["preview_prompt"] and changed("prompt"):
                parsed = prompt_html(describe_prompt(snap["preview_prompt"], steps_hint, embedding_counts()),
                                     "Last preview prompt")
            return (job_view.result_text(snap),
                    job_error(snap) if changed("state", "error") else gr.skip(),
                    job_view.progress_html(snap),
                    job_view.chart_frame(job_view.chart_series(snap)) if redraw_chart else gr.skip(),
                    preview_files.items(snap) if changed("previews") else gr.skip(),
                    parsed, job_view.compact_status(snap, "train"), job_view.compact_status(snap, "preprocess"),
                    gr.Timer(active=running), now)

        job_outputs = [out.output, out.error, out.progress, out.loss_plot, out.gallery, out.parsed_prompt,
                       tr.live, pp.live, timer, seen]

        # --- checkpoint ---------------------------------------------------------------------------------
        size_controls = [t2i.width, t2i.height, tr.width, tr.height, pp.width, pp.height]

        def switch_checkpoint(spec, progress=gr.Progress()):
            """Load the checkpoint; the size controls move to its native size (512 SD 1.x, 768 SD 2.x-v, 128 demo)."""
            progress(0, desc=f"Loading {spec}...")
            try:
                ws.load_model(spec)
            except UserError as e:
                return (gr.Dropdown(value=ws.model_name), f"**Error:** {e}", embedding_choices(),
                        *[gr.skip()] * len(size_controls))
            size = train_tab.native_size(ws)
            return (gr.Dropdown(value=ws.model_name), model_caption(ws), embedding_choices(),
                    *[size] * len(size_controls))

        checkpoint.change(switch_checkpoint, checkpoint, [checkpoint, model_status, tr.embedding, *size_controls])
        refresh_checkpoints.click(lambda: gr.Dropdown(choices=ws.checkpoints()), None, checkpoint)

        # --- create embedding ---------------------------------------------------------------------------
        def create_embedding(name, init_text, vectors, overwrite, file_format):
            try:
                path = create_embedding_tab.create(ws, name, init_text, vectors, overwrite, file_format)
            except UserError as e:
                return "", page_message(e), gr.skip()
            return f"Created: {path.resolve()}", "", embedding_choices(path.stem)

        ce.button.click(create_embedding, [ce.name, ce.init_text, ce.vectors, ce.overwrite, ce.file_format],
                        [out.output, out.error, tr.embedding])

        # --- train --------------------------------------------------------------------------------------
        form_components = [component for _, component in tr.form]
        form_keys = [key for key, _ in tr.form]

        def start_training(kind, values):
            """Train Embedding / Train Hypernetwork: the same form; the name and rate come from their own boxes."""
            form, extra = values[:len(form_keys)], values[len(form_keys):]
            hypernetwork, hypernetwork_rate, use_txt2img, *t2i_values = extra
            preview = None
            if use_txt2img:
                p = txt2img_tab.params_from_values(*t2i_values)
                preview = PreviewSettings(p.prompt, p.negative_prompt, p.sampler, int(p.steps), float(p.cfg_scale),
                                          int(p.seed), int(p.width), int(p.height))
            fields = dict(zip(form_keys, form))
            if kind == "hypernetwork":
                fields.update(name=hypernetwork, learn_rate=hypernetwork_rate)
            try:
                cfg = train_tab.config_from_form(fields, preview)
                job = ws.start_training(cfg) if kind == "embedding" else ws.start_hypernetwork_training(cfg)
            except UserError as e:  # a new action: the previous result goes, this sentence is the one message
                return "", str(e), gr.Timer(active=_running(ws))
            return f"{job.title}...", "", gr.Timer(active=True)

        train_inputs = form_components + [tr.hypernetwork, tr.hypernetwork_learn_rate, tr.use_txt2img] + t2i.params
        tr.train.click(lambda *v: start_training("embedding", v), train_inputs, [out.output, out.error, timer])
        tr.train_hypernetwork.click(lambda *v: start_training("hypernetwork", v), train_inputs,
                                    [out.output, out.error, timer])
        tr.interrupt.click(lambda: "Interrupting..." if ws.runner.interrupt() else "Nothing is running.",
                           None, out.output, queue=False)
        timer.tick(render, seen, job_outputs, show_progress="hidden")

        def watch_jobs(seen_before):
            """A job this page has not shown yet (started from another tab or the HTTP API): draw it and start
            the job timer; otherwise change nothing."""
            job = ws.runner.current
            if job is None or (seen_before and seen_before["id"] == job.id):
                return (*[gr.skip()] * len(job_outputs),)
            return render(seen_before)

        gr.Timer(JOB_WATCH_SECONDS).tick(watch_jobs, seen, job_outputs, show_progress="hidden")

        # a reloaded page re-opens the running job's tab with its form filled from the job's settings
        restored = reattach.Restorer(ws, main_tabs, train_tabs, tr, pp, t2i, embedding_choices)

        def on_load():
            """A new or reloaded page: current lists (files may have appeared) and the running job, if any."""
            return (*render(None), gr.Dropdown(choices=ws.checkpoints(), value=ws.model_name), model_caption(ws),
                    *restored.values())  # (the embedding list is refreshed by the restore)

        demo.load(on_load, None, job_outputs + [checkpoint, model_status] + restored.outputs)
        demo.load(None, None, None, js=txt2img_tab.CTRL_ENTER_JS)
        tr.refresh_embeddings.click(lambda v: embedding_choices(v), tr.embedding, tr.embedding)
        tr.refresh_templates.click(lambda v: gr.Dropdown(choices=ws.templates(), value=v), tr.template,
                                   tr.template)

        def settings_choices(log_dir):
            return gr.Dropdown(choices=train_tab.settings_files(ws.folders.resolve(log_dir or "textual_inversion")))

        tr.log_dir.change(settings_choices, tr.log_dir, tr.settings_file)
        tr.settings_file.focus(settings_choices, tr.log_dir, tr.settings_file)

        def load_settings(path):
            """Every field the settings file holds, back into the form (and the txt2img tab's preview fields)."""
            skip_all = [gr.skip()] * len(restored.train_outputs)
            if not (path or "").strip():
                return skip_all + ["", "Choose a settings file: they are listed from the log directory's runs."]
            try:
                cfg = TrainConfig.load(ws.folders.resolve(path or ""))
            except UserError as e:
                return skip_all + ["", str(e)]
            values = restored.train_values(cfg, train_tab.settings_kind(ws.folders.resolve(path)))
            return values + [f"Loaded settings from {path}.", ""]

        tr.load_settings.click(load_settings, tr.settings_file, restored.train_outputs + [out.output, out.error])

        # --- txt2img ------------------------------------------------------------------------------------
        t2i_stop = threading.Event()  # this page's Interrupt for txt2img

        def generate(*values):
            yield from txt2img_run.generate(ws, values, t2i_stop)

        t2i.generate.click(generate, t2i.params, [t2i.gallery, t2i.infotext, t2i.error, t2i.progress],
                           show_progress="hidden")
        t2i.interrupt.click(lambda: t2i_stop.set(), None, None, queue=False)
        t2i.random_seed.click(lambda: -1, None, t2i.seed)

        def prompt_changed(prompt, steps, follow_training):
            parsed = prompt_html(describe_prompt(prompt or "", int(steps), embedding_counts()), "Parsed prompt")
            counter = token_counter_html(ws, prompt or "")
            train_view = parsed if follow_training and not _running(ws) else gr.skip()
            return parsed, counter, train_view

        for trigger in (t2i.prompt.change, t2i.steps.change, tr.use_txt2img.change):
            trigger(prompt_changed, [t2i.prompt, t2i.steps, tr.use_txt2img],
                    [t2i.parsed, t2i.token_counter, out.parsed_prompt], show_progress="hidden")
    return demo


def _running(ws) -> bool:
    job = ws.runner.current
    return bool(job and job.running)


def model_caption(ws) -> str:
    model = ws._model
    if model is None:
        return "No model loaded."
    return (f"Loaded **{model.name}** [{model.checkpoint_hash}] on {model.device} "
            f"({model.family}, text width {model.text_width}, {model.prediction_type})")


def token_counter_html(ws, prompt: str) -> str:
    from trainer.prompts.conditioning import PromptEncoder

    model = ws.model
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, ws.embedding_vectors())
    used, limit = encoder.count_tokens(prompt)
    return f"<span title='tokens used / chunk limit'>{used}/{limit}</span>"
