"""Draw a job snapshot (trainer.job.Job.snapshot) as the Train tab's output column."""
import html
import shutil
import tempfile
import threading
import time
import uuid
import weakref
from pathlib import Path

import pandas as pd

from common.events import Status

MAX_CHART_POINTS = 500  # per series: the chart is re-sent whole, so its size is bounded however long the run
SERIES_COLORS = {"raw": "#94a3b8", "smoothed": "#f97316", "validation": "#2563eb"}  # a new series adds its colour here


def chart_series(snap: dict | None, smoothing: float = 0.9) -> dict:
    """The chart's lines, name -> [(step, value)], thinned: the raw loss (averaged over each thinned bucket), its
    exponential moving average, and the validation loss. Another series is one more entry here and in SERIES_COLORS."""
    losses = snap["losses"] if snap else []
    validations = list(snap.get("validations") or []) if snap else []
    if not losses:
        return {}
    smooth, ema = [], losses[0][1]
    for step, value in losses:
        ema = smoothing * ema + (1 - smoothing) * value
        smooth.append((step, ema))
    series = {"raw": thin(losses, average=True), "smoothed": thin(smooth)}
    if validations:
        series["validation"] = thin(validations)
    return series


def thin(points: list, average: bool = False, limit: int = MAX_CHART_POINTS) -> list:
    """At most about `limit` points: one per bucket of consecutive points, at the bucket's last step (its mean
    value when `average`), always ending with the newest point."""
    stride = -(-len(points) // limit) if len(points) > limit else 1
    if stride == 1:
        return list(points)
    out = []
    for start in range(0, len(points), stride):
        bucket = points[start:start + stride]
        value = sum(v for _, v in bucket) / len(bucket) if average else bucket[-1][1]
        out.append((bucket[-1][0], value))
    return out


def chart_frame(series: dict) -> pd.DataFrame | None:
    """Long format for gr.LinePlot, with explicit types (whole-number steps, the series as a category); None for
    no points at all: an empty frame would reach the browser typed as numbers and leave the chart undrawable."""
    rows = [(step, value, name) for name, points in series.items() for step, value in points]
    if not rows:
        return None
    frame = pd.DataFrame(rows, columns=["step", "loss", "series"])
    frame["step"] = frame["step"].astype("int64")
    frame["loss"] = frame["loss"].astype("float64")
    frame["series"] = pd.Categorical(frame["series"], categories=list(dict.fromkeys([*SERIES_COLORS, *series])))
    return frame


def loss_frame(losses: list, smoothing: float = 0.9, validations: list = ()) -> pd.DataFrame | None:
    """Raw loss, its moving average and the validation loss for [(step, loss)], as the chart draws them."""
    return chart_frame(chart_series({"losses": losses, "validations": list(validations)}, smoothing))


def chart_interval(points: int) -> float:
    """Seconds between two redraws of the chart: every poll for short runs, less often for long ones (each
    redraw re-sends the whole thinned frame)."""
    return 1.0 if points <= 2 * MAX_CHART_POINTS else 5.0


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def steps_done(snap: dict) -> int | None:
    """The optimizer steps a training job has done (None before its loop starts)."""
    return snap["step"].step if snap["step"] is not None else snap["start_step"]


def progress_html(snap: dict | None) -> str:
    """Step/max with a bar, loss, learning rate, it/s, ETA, last prompt and last saved files."""
    if not snap:
        return "<div class='ti-progress'>No job has run yet.</div>"
    state, step, progress = snap["state"], snap["step"], snap["progress"]
    rows = [f"<b>{html.escape(snap['title'])}</b> &mdash; {html.escape(state)}"]
    if snap["kind"] == "preprocess":
        done, total = (progress.done, progress.total) if progress is not None else (None, None)
    else:
        done, total = steps_done(snap), snap["max_steps"]
        if progress is not None and state == Status.RUNNING:
            rows.append(f"Preparing dataset: image {progress.done}/{progress.total}")
    if done is not None and total:
        percent = 100.0 * done / total
        rows.append(f"<div class='ti-bar'><div style='width:{percent:.1f}%'></div></div>")
        line = f"Step {done}/{total}" if snap["kind"] != "preprocess" else f"Image {done}/{total}"
        rate = step.it_per_s if step is not None else 0.0
        if snap["kind"] == "preprocess":
            elapsed = (snap.get("finished_at") or time.time()) - snap["started"]
            rate = done / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            line += f" &middot; {rate:.2f} it/s"
            if state == Status.RUNNING:
                line += f" &middot; ETA {format_duration((total - done) / rate)}"
        rows.append(line)
    if step is not None:
        epoch = f"Epoch {step.epoch}, step {step.epoch_step + 1}"
        if step.epoch_len:
            epoch += f"/{step.epoch_len}"
        rows.append(f"Loss: {step.loss:.6f} &middot; Learning rate: {step.lr:.3g} &middot; {epoch}")
    rows += validation_rows(snap.get("validation"))
    if snap["last_prompt"]:
        rows.append(f"Last prompt: <code>{html.escape(snap['last_prompt'])}</code>")
    if snap["saved_files"]:
        files = "<br>".join(html.escape(f) for f in snap["saved_files"][:3])
        rows.append(f"Last saved:<br>{files}")
    for message in snap["messages"][-3:]:
        rows.append(html.escape(message))
    return "<div class='ti-progress'>" + "<br>".join(rows) + "</div>"


def compact_status(snap: dict | None, kind: str) -> str:
    """One line beside the buttons (the output column may be scrolled away): step/max, loss, ETA, or how it ended.
    `kind` is "train" or "preprocess": each subtab shows only its own jobs."""
    if not snap or (snap["kind"] == "preprocess") != (kind == "preprocess"):
        return ""
    state, step, progress = snap["state"], snap["step"], snap["progress"]
    if state == Status.RUNNING:
        parts = []
        if snap["kind"] == "preprocess":
            if progress is not None and progress.total:
                parts.append(f"Image {progress.done}/{progress.total}")
        elif progress is not None:
            parts.append(f"Preparing dataset: image {progress.done}/{progress.total}")
        elif snap["max_steps"]:
            done = steps_done(snap) or 0
            parts.append(f"Step {done}/{snap['max_steps']}")
            if step is not None:
                parts.append(f"loss {step.loss:.4f}")
                if step.it_per_s > 0:
                    parts.append(f"ETA {format_duration((snap['max_steps'] - done) / step.it_per_s)}")
        text = " · ".join(parts) or "starting..."
        return f"<div class='ti-live'>{html.escape(snap['title'])}: {html.escape(text)}</div>"
    if snap["error"]:  # the sentence itself is shown once, in the output column's error box
        text = f"{snap['title']} stopped: the reason is in the error box of the output column."
    else:
        text = (snap["message"] or state).splitlines()[0]
    return f"<div class='ti-live ti-{html.escape(state)}'>{html.escape(text)}</div>"


class PreviewFiles:
    """Each preview written once as a PNG in a private temporary folder, so a gallery update sends file paths
    instead of encoding all of the newest previews again (16 previews of 512 px took seconds per update). Files
    of previews that left the list are deleted; the folder goes when the app ends. One per page (not global)."""

    def __init__(self):
        self.folder = Path(tempfile.mkdtemp(prefix="ti-previews-"))
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.folder, True)
        self.written = {}  # (job id, caption) -> path
        self.lock = threading.Lock()

    def items(self, snap: dict | None) -> list:
        """[(path, caption)] of the job's previews, newest first."""
        if not snap:
            return []
        with self.lock:
            keep = {}
            for image, caption in reversed(snap["previews"]):
                key = (snap["id"], caption)
                path = self.written.get(key)
                if path is None:
                    path = self.folder / f"{uuid.uuid4().hex}.png"
                    image.save(path)
                keep[key] = path
            for key, path in self.written.items():
                if key not in keep:
                    path.unlink(missing_ok=True)
            self.written = keep
            return [(str(path), caption) for (_, caption), path in keep.items()]


def validation_rows(event) -> list:
    """The latest validation loss and the best so far (an `events.Validated`, or None); for embeddings, the
    vectors' norms beside the init words' and a typical token's."""
    if event is None:
        return []
    rows = [f"Validation loss: {event.val_loss:.6f} at step {event.step} &middot; best "
            f"{event.best_val_loss:.6f} at step {event.best_step}"]
    health = event.health
    if "norm_max" in health:
        start = "init words" if not health["init_step"] else f"at step {health['init_step']}"
        rows.append(f"Vector norms: {html.escape(health['norms'])} (mean {health['norm_mean']:.4f}, max "
                    f"{health['norm_max']:.4f} = {health['max_vs_token']:.2f}&times; a typical token's "
                    f"{health['token_norm']:.4f}; {start} {health['init_norm_mean']:.4f})")
    return rows


def result_text(snap: dict | None) -> str:
    if not snap:
        return ""
    if snap["state"] == Status.RUNNING:
        return f"{snap['title']}..."
    # a failed run's sentence is in the error box (once); the result box never says something else
    message = "" if snap["error"] else snap["message"]
    return "\n".join([message, *snap.get("warnings", [])]).strip()


def error_text(snap: dict | None) -> str:
    return snap["error"] if snap else ""


CSS = """
.ti-bar { background: #ddd; border-radius: 4px; height: 10px; margin: 4px 0; }
.ti-bar > div { background: #f97316; height: 10px; border-radius: 4px; }
#ti_error:not(:empty) { color: #b91c1c; }
.gradio-container { overflow: visible !important; overflow-x: clip !important; } /* lets the column below stick */
#ti_output_column { position: sticky; top: 8px; align-self: flex-start; max-height: calc(100vh - 16px);
                    overflow-y: auto; }
.ti-live { font-weight: 600; padding: 4px 8px; border-radius: 6px; background: #fff7ed; }
.ti-live.ti-failed, .ti-live.ti-nan { background: #fef2f2; color: #b91c1c; }
.ti-live:empty { display: none; }
/* one or two images in a gallery are drawn as big squares: keep them inside the gallery's box, whole */
#txt2img_gallery .grid-wrap .thumbnail-item { max-height: 370px; }
#ti_gallery .grid-wrap .thumbnail-item { max-height: 310px; }
#txt2img_gallery .thumbnail-item img, #ti_gallery .thumbnail-item img { object-fit: contain; }
.parsed-prompt span.seg { border-radius: 4px; padding: 1px 3px; margin: 1px; display: inline-block; }
.parsed-prompt span.emb { outline: 2px solid #2563eb; }
.parsed-prompt span.hn { outline: 2px dashed #7c3aed; background: #f5f3ff; }
.parsed-prompt span.sched { text-decoration: underline dotted; }
.parsed-prompt sub { font-size: 70%; opacity: 0.8; }
"""
