"""The page's handlers, called as Gradio calls them (plain values in, {component: value} out), without a browser:
what the user would read in the output column, the lists and the form."""
from types import SimpleNamespace

import gradio as gr
import pytest

from common.folders import Folders
from trainer.training.config import PreviewSettings, TrainConfig
from trainer.workspace import Workspace
from webui import (create_embedding_tab, create_hypernetwork_tab, demo_dataset, model_bar, output_column, reattach,
                   train_tab, txt2img_tab)
from webui.app import build_page
from webui.job_view import PreviewFiles


@pytest.fixture
def page(work, demo_model):
    """The whole page for a user's working folder (4 photos in data/), the demo model loaded."""
    ws = Workspace(Folders.under(work), "cpu", model=demo_model)
    with gr.Blocks() as demo:
        p = build_page(ws, demo.load)
    p.ws = ws
    yield p
    ws.interrupt_job()
    ws.runner.wait(timeout=120)


def form_values(p, **overrides) -> dict:
    """{component: value} of the Train subtab as the page starts, with some fields changed (by TrainConfig name)."""
    values = {component: component.value for component in train_tab.form_outputs(p.tr, p.t2i.preview_fields)}
    values.update({dict(p.tr.form)[key] if key in dict(p.tr.form) else getattr(p.tr, key): value
                   for key, value in overrides.items()})
    return values


def test_the_forms_start_from_the_config_defaults(page):
    """An untouched Train form is TrainConfig's defaults at the model's native size; txt2img is Txt2ImgParams'."""
    values = {key: component.value for key, component in page.tr.form}
    cfg = train_tab.config_from_form({**values, "name": "cat", "dataset": "data"}, None)
    assert cfg == TrainConfig(name="cat", dataset="data", width=128, height=128)  # the demo model's size
    assert page.tr.hypernetwork_learn_rate.value == "0.00001" and page.tr.use_txt2img.value is False
    preview = train_tab.preview_from_values({name: c.value for name, c in page.t2i.preview_fields.items()})
    assert preview == PreviewSettings(width=128, height=128)
    assert page.t2i.batch_count.value == 1 and page.pp.caption_action.value == "ignore"


def test_create_embedding_then_it_is_chosen_for_training(page):
    out = page.out
    shown = create_embedding_tab.on_create(page.ws, page.ce, page.shared, "my cat", "cat", 2, False, "pt")
    path = page.ws.folders.embeddings_dir / "my cat.pt"
    assert shown == {out.output: f"Created: {path}", out.error: "", page.ce.created: "my cat"}
    chosen = train_tab.select_created_embedding(page.ws, shown[page.ce.created])
    assert (chosen.value, chosen.choices) == ("my cat", [("my cat", "my cat")])

    again = create_embedding_tab.on_create(page.ws, page.ce, page.shared, "my cat", "cat", 2, False, "pt")
    assert again[out.output] == "" and again[page.ce.created] is None
    assert again[out.error].endswith("Tick 'Overwrite Old Embedding' to replace it.")
    assert train_tab.select_created_embedding(page.ws, None) == gr.skip()  # the list stays as it was


def test_create_hypernetwork_reports_the_path_it_made(page):
    values = [c.value for c in page.ch.inputs]
    values[0] = "anime"
    shown = create_hypernetwork_tab.on_create(page.ws, page.ch, page.shared, *values)
    path = page.ws.folders.hypernetwork_dir / "anime.pt"
    assert path.is_file() and shown[page.out.output] == f"Created: {path}"
    assert shown[page.ch.created] == "anime" and shown[page.out.error] == ""
    assert train_tab.select_created_hypernetwork(page.ws, "anime").value == "anime"
    refused = create_hypernetwork_tab.on_create(page.ws, page.ch, page.shared, *values)
    assert refused[page.out.error].endswith("Tick 'Overwrite Old Hypernetwork' to replace it.")
    assert refused[page.ch.created] is None


def test_demo_dataset_points_the_train_form_at_its_folder(page):
    made = demo_dataset.make_dataset(page.ws, page.dd, page.shared, "red square on a white background", 2,
                                     "datasets/red", False)
    folder = page.ws.folders.resolve("datasets/red")
    assert made[page.dd.made] == str(folder) and made[page.out.output].startswith("Wrote 2 pictures")
    assert train_tab.use_dataset(made[page.dd.made]) == str(folder)
    refused = demo_dataset.make_dataset(page.ws, page.dd, page.shared, "a blue dog", 2, "datasets/dog", False)
    assert refused[page.dd.made] is None and refused[page.out.error]
    assert page.out.output not in refused  # the last result stays


def test_train_without_an_embedding_says_so_and_the_timer_stays_off(page):
    shown = train_tab.start_training(page.ws, page.tr, page.shared, page.t2i.preview_fields, "embedding",
                                     form_values(page, dataset="data"))
    assert shown[page.out.error] == "Choose an embedding to train (create one in the Create embedding tab)."
    assert shown[page.out.output] == "" and shown[page.shared.job_timer].active is False
    assert output_column.interrupt_job(page.ws) == "Nothing is running."


def test_train_load_its_settings_back_and_the_job_view_draws_it(page):
    ws, out, tr = page.ws, page.out, page.tr
    create_embedding_tab.on_create(ws, page.ce, page.shared, "cat", "cat", 1, False, "pt")
    values = form_values(page, name="cat", dataset="data", steps=2, width=64, height=64, preview_every=0,
                         save_every=0, validate_every=0, use_txt2img=True, learn_rate="0.01")
    values[page.t2i.prompt] = "a photo of cat"
    shown = train_tab.start_training(ws, tr, page.shared, page.t2i.preview_fields, "embedding", values)
    assert shown[out.output] == "Training embedding cat..." and shown[page.shared.job_timer].active is True
    job = ws.runner.wait(timeout=300)
    assert job.state == "finished", job.error

    view = page_view(page)
    drawn = output_column.render(ws, view)
    assert drawn[out.output].startswith(job.message.splitlines()[0]) and "Step 2/2" in drawn[out.progress]
    assert drawn[out.error] == "" and drawn[view.timer].active is False
    again = output_column.render(ws, view, drawn[view.seen])
    assert set(again) == {view.timer, view.seen} and again[view.timer].active is False  # nothing new is sent
    assert output_column.watch_jobs(ws, view, drawn[view.seen]) == gr.skip()

    [settings] = train_tab.settings_files(ws.folders.resolve("textual_inversion"))
    assert train_tab.settings_choices(ws, "textual_inversion").choices == [(settings, settings)]
    loaded = train_tab.load_settings(ws, tr, page.shared, page.t2i.preview_fields, settings)
    assert loaded[out.output] == f"Loaded settings from {settings}." and loaded[out.error] == ""
    assert loaded[tr.embedding].value == "cat" and loaded[dict(tr.form)["steps"]] == 2
    assert loaded[tr.learn_rate] == "0.01" and loaded[tr.use_txt2img] is True
    assert loaded[page.t2i.prompt] == "a photo of cat" and loaded[page.t2i.width] == 128  # the preview size
    assert tr.hypernetwork not in loaded  # an embedding's settings leave the hypernetwork boxes alone

    empty = train_tab.load_settings(ws, tr, page.shared, page.t2i.preview_fields, " ")
    assert empty == {out.output: "", out.error: "Choose a settings file: they are listed from the log directory's "
                                                 "runs."}


def page_view(page):
    """What output_column.wire draws into: the output column, the job timer and the subtabs' status lines."""
    return SimpleNamespace(out=page.out, timer=page.shared.job_timer, seen=gr.State(None),
                           live={"train": page.tr.live, "preprocess": page.pp.live}, previews=PreviewFiles())


def test_a_reloaded_page_without_a_job_only_refreshes_the_embedding_list(page):
    create_embedding_tab.on_create(page.ws, page.ce, page.shared, "dog", "dog", 1, False, "pt")
    view = SimpleNamespace(main_tabs=page.main_tabs, train_tabs=page.train_tabs, tr=page.tr, pp=page.pp,
                           txt2img=page.t2i.preview_fields)
    restored = reattach.restore_page(page.ws, view)
    assert list(restored) == [page.tr.embedding] and restored[page.tr.embedding].choices == [("dog", "dog")]
    assert output_column.render(page.ws, page_view(page))[page.shared.job_timer].active is False


def test_a_refused_checkpoint_keeps_the_model_and_the_sizes(page, tmp_path):
    (page.ws.folders.ckpt_dir).mkdir(parents=True, exist_ok=True)
    (page.ws.folders.ckpt_dir / "broken.ckpt").write_bytes(b"not a checkpoint")
    bar = page.bar
    shown = model_bar.switch_checkpoint(page.ws, bar, "broken.ckpt", progress=lambda *a, **k: None)
    assert shown[bar.checkpoint]["value"] == "demo" and shown[bar.loaded] is None
    assert shown[bar.status].startswith("**Error:**") and shown[bar.status].endswith("demo stays loaded.")
    assert train_tab.follow_model(page.ws, page.tr, None) == gr.skip()  # the Train form keeps its sizes
    assert txt2img_tab.follow_model(page.ws, page.t2i, None) == gr.skip()
    switched = train_tab.follow_model(page.ws, page.tr, "demo")
    assert (switched[page.tr.width], switched[page.tr.height]) == (128, 128)
    assert "**demo**" in model_bar.show_loaded(page.ws, bar)[bar.status]


def test_typing_a_prompt_parses_it_and_counts_its_tokens(page):
    shown = txt2img_tab.prompt_changed(page.ws, page.t2i, "a (red:1.5) circle", 20)
    assert "Parsed prompt" in shown[page.t2i.parsed] and "1.50" in shown[page.t2i.parsed]
    assert shown[page.t2i.token_counter].endswith(">3/75</span>")
    assert train_tab.show_preview_prompt(page.ws, "a circle", 20, False) == gr.skip()  # previews don't follow
    assert "Parsed prompt" in train_tab.show_preview_prompt(page.ws, "a circle", 20, True)
