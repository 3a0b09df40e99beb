"""The Train tab's right-hand column, shared by its subtabs: result, error, progress, chart, gallery, prompt; and
the job view that draws the workspace's job into it.

The page's job timer polls once a second while a job runs (`render`); a slower watch timer notices a job started
elsewhere (another page, the HTTP API) and page load re-attaches to a running one (`watch_jobs`, `render`).
"""
import time
from functools import partial
from types import SimpleNamespace

import gradio as gr

from . import job_view
from .hints import job_error
from .job_view import SERIES_COLORS
from .prompt_html import parsed_prompt_html


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


def wire(ws, c, job_timer: gr.Timer, watch_timer: gr.Timer, page_load, live: dict) -> None:
    """Draw the job on `job_timer` ticks, on `watch_timer` ticks when a new job appeared, and on page load.
    `live`: the subtabs' one-line status beside their buttons, {"train": html, "preprocess": html}."""
    view = SimpleNamespace(out=c, timer=job_timer, live=live, seen=gr.State(None),  # what this page shows
                           previews=job_view.PreviewFiles())  # previews encoded once, sent as files
    outputs = job_outputs(view)
    job_timer.tick(partial(render, ws, view), view.seen, outputs, show_progress="hidden")
    watch_timer.tick(partial(watch_jobs, ws, view), view.seen, outputs, show_progress="hidden")
    page_load(partial(render, ws, view), None, outputs)


def job_outputs(view) -> list:
    out = view.out
    return [out.output, out.error, out.progress, out.loss_plot, out.gallery, out.parsed_prompt,
            view.live["train"], view.live["preprocess"], view.timer, view.seen]


def render(ws, view, seen_before=None, steps_hint: int = 20) -> dict:
    """The current job, drawn: only what changed since `seen_before` (what this page already shows) is sent.

    The error box is only written when the job's state or error changes, so a refusal message stays visible
    while the job runs. The chart is redrawn at most every `job_view.chart_interval` seconds."""
    out = view.out
    job = ws.current_job()
    snap = job.snapshot() if job else None
    if snap is None:
        return {view.timer: gr.Timer(active=False), view.seen: None}
    running = snap["state"] == "running"
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
    updates = {view.timer: gr.Timer(active=running), view.seen: now}
    if now == old:
        return updates

    def changed(*keys):
        return any(old.get(k) != now[k] for k in keys)

    updates.update({out.output: job_view.result_text(snap), out.progress: job_view.progress_html(snap),
                    view.live["train"]: job_view.compact_status(snap, "train"),
                    view.live["preprocess"]: job_view.compact_status(snap, "preprocess")})
    if changed("state", "error"):
        updates[out.error] = job_error(snap)
    if redraw_chart:
        updates[out.loss_plot] = job_view.chart_frame(job_view.chart_series(snap))
    if changed("previews"):
        updates[out.gallery] = view.previews.items(snap)
    if snap["preview_prompt"] and changed("prompt"):
        updates[out.parsed_prompt] = parsed_prompt_html(ws, snap["preview_prompt"], steps_hint,
                                                        "Last preview prompt")
    return updates


def watch_jobs(ws, view, seen_before) -> dict:
    """A job this page has not shown yet (started from another page or the HTTP API): draw it and start the job
    timer; otherwise change nothing."""
    job = ws.current_job()
    if job is None or (seen_before and seen_before["id"] == job.id):
        return gr.skip()  # nothing changes
    return render(ws, view, seen_before)


def interrupt_job(ws) -> str:
    """The Interrupt buttons of the Train and Preprocess subtabs (for the output box)."""
    return "Interrupting..." if ws.interrupt_job() else "Nothing is running."
