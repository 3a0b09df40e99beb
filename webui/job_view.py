"""Draw a job snapshot (trainer.job.Job.snapshot) as the Train tab's output column."""
import html
import time

import pandas as pd

MAX_CHART_POINTS = 1500


def loss_frame(losses: list, smoothing: float = 0.9, validations: list = ()) -> pd.DataFrame:
    """Raw loss and its exponential moving average, thinned to at most MAX_CHART_POINTS per series, and the
    validation loss [(step, loss)] as a third series."""
    if not losses:
        return pd.DataFrame({"step": [], "loss": [], "series": []})
    steps = [s for s, _ in losses]
    raw = [loss for _, loss in losses]
    smooth, ema = [], raw[0]
    for value in raw:
        ema = smoothing * ema + (1 - smoothing) * value
        smooth.append(ema)
    stride = max(1, len(steps) // MAX_CHART_POINTS)
    keep = list(range(0, len(steps), stride))
    if keep[-1] != len(steps) - 1:
        keep.append(len(steps) - 1)
    return pd.DataFrame({
        "step": [steps[i] for i in keep] * 2 + [step for step, _ in validations],
        "loss": [raw[i] for i in keep] + [smooth[i] for i in keep] + [loss for _, loss in validations],
        "series": ["raw"] * len(keep) + ["smoothed"] * len(keep) + ["validation"] * len(validations),
    })


def format_duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def progress_html(snap: dict | None) -> str:
    """Step/max with a bar, loss, learning rate, it/s, ETA, last prompt and last saved files."""
    if not snap:
        return "<div class='ti-progress'>No job has run yet.</div>"
    latest = snap["latest"]
    state = snap["state"]
    rows = [f"<b>{html.escape(snap['title'])}</b> &mdash; {html.escape(state)}"]
    done, total = latest.get("step"), latest.get("max_steps")
    if snap["kind"] == "preprocess":
        done, total = latest.get("done"), latest.get("total")
    elif latest.get("type") == "dataset" and state == "running":
        rows.append(f"Preparing dataset: image {latest.get('done', 0)}/{latest.get('total', 0)}")
    if done is not None and total:
        percent = 100.0 * done / total
        rows.append(f"<div class='ti-bar'><div style='width:{percent:.1f}%'></div></div>")
        line = f"Step {done}/{total}" if snap["kind"] != "preprocess" else f"Image {done}/{total}"
        rate = latest.get("it_per_s") or 0.0
        if snap["kind"] == "preprocess":
            elapsed = (snap.get("finished_at") or time.time()) - snap["started"]
            rate = done / elapsed if elapsed > 0 else 0.0
        if rate > 0:
            line += f" &middot; {rate:.2f} it/s"
            if state == "running":
                line += f" &middot; ETA {format_duration((total - done) / rate)}"
        rows.append(line)
    if "loss" in latest:
        rows.append(f"Loss: {latest['loss']:.6f} &middot; Learning rate: {latest['lr']:.3g} "
                    f"&middot; Epoch {latest.get('epoch', 0)}, step {latest.get('epoch_step', 0)}")
    rows += validation_rows(snap.get("validation") or {})
    if snap["last_prompt"]:
        rows.append(f"Last prompt: <code>{html.escape(snap['last_prompt'])}</code>")
    if snap["saved_files"]:
        files = "<br>".join(html.escape(f) for f in snap["saved_files"][:3])
        rows.append(f"Last saved:<br>{files}")
    for message in snap["messages"][-3:]:
        rows.append(html.escape(message))
    return "<div class='ti-progress'>" + "<br>".join(rows) + "</div>"


def validation_rows(event: dict) -> list:
    """The latest validation loss and the best so far; for embeddings, the vectors' norms beside the init words'
    and a typical token's."""
    if not event:
        return []
    rows = [f"Validation loss: {event['val_loss']:.6f} at step {event['step']} &middot; best "
            f"{event['best_val_loss']:.6f} at step {event['best_step']}"]
    if "norm_max" in event:
        rows.append(f"Vector norms: {html.escape(event['norms'])} (mean {event['norm_mean']:.4f}, max "
                    f"{event['norm_max']:.4f} = {event['max_vs_token']:.2f}&times; a typical token's "
                    f"{event['token_norm']:.4f}; {'init words' if not event['init_step'] else 'at step ' + str(event['init_step'])} "
                    f"{event['init_norm_mean']:.4f})")
    return rows


def gallery_items(snap: dict | None) -> list:
    """Previews newest first, captioned with their step."""
    return list(reversed(snap["previews"])) if snap else []


def result_text(snap: dict | None) -> str:
    if not snap:
        return ""
    if snap["state"] == "running":
        return f"{snap['title']}..."
    return snap["message"]


def error_text(snap: dict | None) -> str:
    return snap["error"] if snap else ""


CSS = """
.ti-bar { background: #ddd; border-radius: 4px; height: 10px; margin: 4px 0; }
.ti-bar > div { background: #f97316; height: 10px; border-radius: 4px; }
#ti_error:not(:empty) { color: #b91c1c; }
.parsed-prompt span.seg { border-radius: 4px; padding: 1px 3px; margin: 1px; display: inline-block; }
.parsed-prompt span.emb { outline: 2px solid #2563eb; }
.parsed-prompt span.hn { outline: 2px dashed #7c3aed; background: #f5f3ff; }
.parsed-prompt span.sched { text-decoration: underline dotted; }
.parsed-prompt sub { font-size: 70%; opacity: 0.8; }
"""
