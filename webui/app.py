"""Assemble the page: checkpoint picker, txt2img tab, Train tab (subtabs + shared output column).

Handlers stay a few lines: they build a config object and call the engine (trainer/, preprocess/). Long work
runs in the workspace's job runner; a gr.Timer polls the job once a second while it runs, and page load
re-attaches to a running job.
"""
import gradio as gr

from trainer.errors import UserError
from trainer.prompt_view import describe_prompt, names_in_prompt
from trainer.train_config import PreviewSettings, TrainConfig

from . import (create_embedding_tab, create_hypernetwork_tab, demo_dataset, job_view, output_column, preprocess_tab,
               train_tab, txt2img_tab)
from .prompt_html import prompt_html

JOB_POLL_SECONDS = 1.0


def build_app(ws) -> gr.Blocks:
    ws.model  # loaded before the page is built: the checkpoint and embedding lists come from it
    with gr.Blocks(title="Textual inversion trainer") as demo:
        with gr.Row():
            checkpoint = gr.Dropdown(label="Stable Diffusion checkpoint", choices=ws.checkpoints(),
                                     value=ws.model_name, elem_id="setting_sd_model_checkpoint", scale=4)
            refresh_checkpoints = gr.Button("↻", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            model_status = gr.Markdown(model_caption(ws), elem_id="model_status")
        with gr.Tabs():
            with gr.Tab("txt2img", id="txt2img"):
                t2i = txt2img_tab.build(train_tab.native_size(ws))
            with gr.Tab("Train", id="train"):
                with gr.Row():
                    with gr.Column():
                        with gr.Tabs():
                            with gr.Tab("Create embedding", id="create_embedding"):
                                ce = create_embedding_tab.build()
                            with gr.Tab("Create hypernetwork", id="create_hypernetwork"):
                                ch = create_hypernetwork_tab.build(ws)
                            with gr.Tab("Preprocess images", id="preprocess_images"):
                                dd = demo_dataset.build()
                                pp = preprocess_tab.build(train_tab.native_size(ws))
                            with gr.Tab("Train", id="train_embedding"):
                                tr = train_tab.build(ws)
                    with gr.Column():
                        out = output_column.build()
        timer = gr.Timer(JOB_POLL_SECONDS, active=False)
        seen = gr.State(None)  # what this page already shows, so unchanged parts are not re-sent
        preprocess_tab.wire(ws, pp, out, timer)
        demo_dataset.wire(dd, out, tr.dataset)
        create_hypernetwork_tab.wire(ws, ch, out, tr, model_status, demo)

        # --- helpers ------------------------------------------------------------------------------------
        def embedding_choices(value=None):
            names = sorted(ws.embeddings()[0])
            return gr.Dropdown(choices=names, value=value if value in names else None)

        def embedding_counts() -> dict:
            return {name: e.num_vectors for name, e in ws.embeddings()[0].items()}

        def render(seen_before, steps_hint=20):
            """Outputs for the current job: (output, error, progress, plot, gallery, parsed, timer, seen).

            `seen` remembers what this page already shows; unchanged parts are skipped (not re-sent), and the
            error box is only written when the job's error changes, so a refusal message stays visible."""
            job = ws.runner.current
            snap = job.snapshot() if job else None
            running = bool(snap and snap["state"] == "running")
            if snap is None:
                return (*[gr.skip()] * 6, gr.Timer(active=False), None)
            old = seen_before if seen_before and seen_before["id"] == snap["id"] else {}
            now = {"id": snap["id"], "state": snap["state"], "losses": len(snap["losses"]),
                   "previews": len(snap["previews"]), "messages": len(snap["messages"]),
                   "done": snap["latest"].get("done"), "prompt": snap["preview_prompt"], "error": snap["error"]}
            if now == old:
                return (*[gr.skip()] * 6, gr.Timer(active=running), now)

            def changed(*keys):
                return any(old.get(k) != now[k] for k in keys)

            parsed = gr.skip()
            if snap["preview_prompt"] and changed("prompt"):
                parsed = prompt_html(describe_prompt(snap["preview_prompt"], steps_hint, embedding_counts()),
                                     "Last preview prompt")
            return (job_view.result_text(snap),
                    job_view.error_text(snap) if changed("error") else gr.skip(),
                    job_view.progress_html(snap),
                    job_view.loss_frame(snap["losses"]) if changed("losses") else gr.skip(),
                    job_view.gallery_items(snap) if changed("previews") else gr.skip(),
                    parsed, gr.Timer(active=running), now)

        job_outputs = [out.output, out.error, out.progress, out.loss_plot, out.gallery, out.parsed_prompt,
                       timer, seen]

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
                return "", str(e), gr.skip()
            return f"Created: {path}", "", embedding_choices(path.stem)

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
            except UserError as e:
                gr.Warning(str(e))
                return gr.skip(), str(e), gr.Timer(active=_running(ws))
            return f"{job.title}...", "", gr.Timer(active=True)

        train_inputs = form_components + [tr.hypernetwork, tr.hypernetwork_learn_rate, tr.use_txt2img] + t2i.params
        tr.train.click(lambda *v: start_training("embedding", v), train_inputs, [out.output, out.error, timer])
        tr.train_hypernetwork.click(lambda *v: start_training("hypernetwork", v), train_inputs,
                                    [out.output, out.error, timer])
        tr.interrupt.click(lambda: "Interrupting..." if ws.runner.interrupt() else "Nothing is running.",
                           None, out.output, queue=False)
        timer.tick(render, seen, job_outputs, show_progress="hidden")

        def on_load():
            """A new or reloaded page: current lists (files may have appeared) and the running job, if any."""
            return (*render(None), embedding_choices(), gr.Dropdown(choices=ws.checkpoints(), value=ws.model_name),
                    model_caption(ws))

        demo.load(on_load, None, job_outputs + [tr.embedding, checkpoint, model_status])
        tr.refresh_embeddings.click(lambda v: embedding_choices(v), tr.embedding, tr.embedding)
        tr.refresh_templates.click(lambda v: gr.Dropdown(choices=ws.templates(), value=v), tr.template,
                                   tr.template)
        tr.log_dir.change(lambda d: gr.Dropdown(choices=train_tab.settings_files(d)), tr.log_dir, tr.settings_file)
        tr.settings_file.focus(lambda d: gr.Dropdown(choices=train_tab.settings_files(d)), tr.log_dir,
                               tr.settings_file)

        def load_settings(path):
            try:
                cfg = TrainConfig.load(path)
            except UserError as e:
                return [gr.skip()] * (len(form_components) + 2) + [str(e)]
            values = train_tab.form_from_config(cfg, tr.form)
            name_at, rate_at = form_keys.index("name"), form_keys.index("learn_rate")
            hypernetwork_values = [gr.skip(), gr.skip()]
            if train_tab.settings_kind(path) == "hypernetwork":  # its name and rate go to the hypernetwork boxes
                hypernetwork_values = [gr.Dropdown(choices=ws.hypernetworks(), value=cfg.name), cfg.learn_rate]
                values[name_at] = values[rate_at] = gr.skip()
            else:
                values[name_at] = embedding_choices(cfg.name)
            return values + hypernetwork_values + [f"Loaded settings from {path}."]

        tr.load_settings.click(load_settings, tr.settings_file,
                               form_components + [tr.hypernetwork, tr.hypernetwork_learn_rate, out.output])

        # --- txt2img ------------------------------------------------------------------------------------
        def generate(*values):
            from trainer.sampling import save_txt2img_outputs, txt2img

            loaded, skipped = ws.embeddings()
            notes = [f"Embedding **{name}** was not used: {skipped[name][1]}."
                     for name in names_in_prompt(values[0] or "", list(skipped)) if name not in loaded]
            try:
                results = txt2img(ws.model, txt2img_tab.params_from_values(*values),
                                  {name: e.vectors for name, e in loaded.items()},
                                  hypernetworks=ws.hypernetwork_library())
            except UserError as e:
                return gr.skip(), gr.skip(), f"**Error:** {e}"
            paths = save_txt2img_outputs(results, ws.folders.outputs_dir)  # downloads keep their infotext
            return ([(str(path), f"seed {r.seed}") for path, r in zip(paths, results)], results[0].infotext,
                    "\n\n".join(notes))

        t2i.generate.click(generate, t2i.params, [t2i.gallery, t2i.infotext, t2i.error])
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
            f"(text width {model.text_width}, {model.prediction_type})")


def token_counter_html(ws, prompt: str) -> str:
    from trainer.conditioning import PromptEncoder

    model = ws.model
    encoder = PromptEncoder(model.tokenizer, model.text_encoder, ws.embedding_vectors())
    used, limit = encoder.count_tokens(prompt)
    return f"<span title='tokens used / chunk limit'>{used}/{limit}</span>"
