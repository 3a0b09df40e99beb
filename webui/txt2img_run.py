"""Generate in the txt2img tab as the reference does: a live "Step i/N" with ETA while the images are made, an
Interrupt that keeps the images already finished, and the notes about embeddings the prompt could not use."""
import html
import threading
import time

from common.errors import UserError
from trainer.prompts.view import embedding_notes

from .job_view import format_duration

POLL_SECONDS = 0.25


def progress_line(event, started: float) -> str:
    """ "Image 1/2 · Step 7/20 · 3.1 it/s · ETA 00:04" for the sampler's last progress event."""
    if not event:
        return "<div class='ti-live'>Preparing the prompt...</div>"
    total_steps = event.total * event.images
    done = (event.image - 1) * event.total + event.step
    elapsed = time.time() - started
    parts = [f"Step {event.step}/{event.total}"]
    if event.images > 1:
        parts.insert(0, f"Image {event.image}/{event.images}")
    if elapsed > 0 and done:
        rate = done / elapsed
        parts += [f"{rate:.2f} it/s", f"ETA {format_duration((total_steps - done) / rate)}"]
    return "<div class='ti-live'>" + html.escape(" · ".join(parts)) + "</div>"


def generate(ws, params, stop: threading.Event):
    """Yields what changed, by name ("gallery", "infotext", "error", "progress"), while the images of `params`
    (Txt2ImgParams) are made; the last update carries the images."""
    from trainer.sampling.txt2img import save_txt2img_outputs, txt2img

    stop.clear()
    loaded, skipped = ws.embeddings()
    notes = [f"Note: {note}" for note in embedding_notes(f"{params.prompt} {params.negative_prompt}", loaded,
                                                         skipped, ws.folders.embeddings_dir)
             if not note.startswith("No embeddings found")]
    latest, outcome = {}, {}

    def work():
        try:
            outcome["results"] = txt2img(ws.model, params, {name: e.vectors for name, e in loaded.items()},
                                         progress=lambda event: latest.update(event=event),
                                         should_stop=stop.is_set, hypernetworks=ws.hypernetwork_library())
        except UserError as e:
            outcome["error"] = str(e)
        except Exception as e:  # noqa: BLE001 - shown in the page; the app keeps running
            outcome["error"] = f"Generation failed: {e.__class__.__name__}: {e}"

    started = time.time()
    worker = threading.Thread(target=work, name="txt2img", daemon=True)
    worker.start()
    yield {"error": "", "progress": progress_line(None, started)}
    while worker.is_alive():
        worker.join(POLL_SECONDS)
        yield {"progress": progress_line(latest.get("event"), started)}
    if "error" in outcome:
        yield {"error": f"**Error:** {outcome['error']}", "progress": ""}
        return
    results = outcome["results"]
    interrupted = stop.is_set()
    if not results:
        yield {"error": "Interrupted before an image was finished.", "progress": ""}
        return
    paths = save_txt2img_outputs(results, ws.folders.outputs_dir)  # downloads keep their infotext
    if interrupted:
        notes.insert(0, f"Interrupted: {len(results)} image(s) finished.")
    notes.append(f"Saved to {paths[0].resolve().parent}.")
    yield {"gallery": [(str(path), f"seed {r.seed}") for path, r in zip(paths, results)],
           "infotext": results[0].infotext, "error": "\n\n".join(notes), "progress": ""}
