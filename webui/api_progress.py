"""`/sdapi/v1/progress` for the HTTP API: the shared job (training, preprocessing) and API txt2img, drawn in the
reference webui's shape (`state.job_count`, `state.job_no`, HTML `textinfo`, base64 `current_image`...)."""
import base64
import html
import io
import threading
import time
from contextlib import contextmanager

from PIL.PngImagePlugin import PngInfo

from common.events import Status


def png_base64(image, infotext: str | None = None) -> str:
    """A PIL image as base64 PNG text (carrying `infotext` as its `parameters` chunk when given)."""
    info = None
    if infotext:
        info = PngInfo()
        info.add_text("parameters", infotext)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class Generation:
    """The API's txt2img requests: one at a time (a second waits, as in the reference's queue), their sampling
    progress for /progress, and the flag /interrupt sets."""

    def __init__(self):
        self.lock = threading.Lock()  # held while a generation runs
        self.stop = threading.Event()
        self._state_lock = threading.Lock()
        self._state = None  # {"started", "step", "steps", "image", "images"} while one runs

    @contextmanager
    def running(self, steps: int, images: int):
        with self.lock:
            self.stop.clear()
            with self._state_lock:
                self._state = {"started": time.time(), "step": 0, "steps": steps, "image": 1, "images": images}
            try:
                yield self
            finally:
                with self._state_lock:
                    self._state = None

    def report(self, event):
        """txt2img's progress callback (`common.events.Sampled`)."""
        with self._state_lock:
            if self._state is not None:
                self._state.update(step=event.step, steps=event.total, image=event.image, images=event.images)

    def snapshot(self) -> dict | None:
        with self._state_lock:
            return dict(self._state) if self._state is not None else None


def idle_state() -> dict:
    return {"skipped": False, "interrupted": False, "stopping_generation": False, "job": "", "job_count": 0,
            "job_timestamp": "0", "job_no": 0, "sampling_step": 0, "sampling_steps": 0}


def training_textinfo(snap: dict) -> str:
    """The reference's HTML block while training: Loss, Step, last prompt, last saved files."""
    step = snap["step"]
    files = snap["saved_files"]
    embedding = next((f for f in files if f.endswith((".pt", ".safetensors"))), "")
    image = next((f for f in files if f.endswith(".png")), "")
    what = "hypernetwork" if snap["kind"] == "train-hypernetwork" else "embedding"
    return ("<p>\n"
            f"Loss: {step.loss:.7f}<br/>\n"
            f"Step: {step.step}<br/>\n"
            f"Last prompt: {html.escape(snap['last_prompt'])}<br/>\n"
            f"Last saved {what}: {html.escape(embedding)}<br/>\n"
            f"Last saved image: {html.escape(image)}<br/>\n"
            "</p>")


def progress_body(job, generation: dict | None, skip_current_image: bool) -> dict:
    """The /progress response for the runner's current job (or None) and the API generation (or None)."""
    state = idle_state()
    if generation is not None:
        state.update(sampling_step=generation["step"], sampling_steps=generation["steps"])
    snap = job.snapshot() if job is not None else None
    if snap is not None and snap["state"] != Status.RUNNING:
        # Like the reference between jobs: nothing counted, the last job's closing words kept.
        state["interrupted"] = snap["state"] == Status.INTERRUPTED or job.stop.is_set()
        snap_text = snap["error"] or snap["message"]
        if generation is None:
            return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None,
                    "textinfo": html.escape(snap_text) if snap_text else None}
    if snap is not None and snap["state"] == Status.RUNNING:
        return _job_progress(job, snap, state, skip_current_image)
    if generation is not None:
        return _generation_progress(generation, state)
    return {"progress": 0.0, "eta_relative": 0.0, "state": state, "current_image": None, "textinfo": None}


def _job_progress(job, snap: dict, state: dict, skip_current_image: bool) -> dict:
    step, progress = snap["step"], snap["progress"]
    if snap["kind"] == "preprocess":
        count, number = (progress.total or -1, progress.done) if progress is not None else (-1, 0)
        textinfo = html.escape(progress.message if progress is not None else "") or None
    else:
        count = snap["max_steps"] or -1
        number = step.step if step is not None else snap["start_step"] or 0
        if step is not None:
            textinfo = training_textinfo(snap)
        else:  # preparing the dataset
            textinfo = html.escape(snap["messages"][-1]) if snap["messages"] else "Initializing..."
    state.update(job=snap["kind"], job_count=count, job_no=number, interrupted=job.stop.is_set(),
                 job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(snap["started"])))
    progress = min(1.0, 0.01 + number / count) if count > 0 else 0.01
    elapsed = time.time() - snap["started"]
    rate = step.it_per_s if step is not None else 0.0
    if snap["kind"] == "preprocess" and number:
        rate = number / elapsed if elapsed > 0 else 0.0
    eta = (count - number) / rate if rate > 0 and count > 0 else elapsed / progress - elapsed
    image = None
    if snap["previews"] and not skip_current_image:
        image = png_base64(snap["previews"][-1][0])
    return {"progress": progress, "eta_relative": max(0.0, eta), "state": state, "current_image": image,
            "textinfo": textinfo}


def _generation_progress(generation: dict, state: dict) -> dict:
    count, number = generation["images"], generation["image"] - 1
    state.update(job="txt2img", job_count=count, job_no=number,
                 job_timestamp=time.strftime("%Y%m%d%H%M%S", time.localtime(generation["started"])))
    fraction = (number + (generation["step"] / generation["steps"] if generation["steps"] else 0)) / count
    progress = min(1.0, 0.01 + fraction)
    elapsed = time.time() - generation["started"]
    return {"progress": progress, "eta_relative": max(0.0, elapsed / progress - elapsed), "state": state,
            "current_image": None, "textinfo": None}
