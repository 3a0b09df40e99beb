"""Engine events -> a tqdm bar and plain lines on stderr, for the headless commands."""
import sys

from tqdm import tqdm


class ConsoleProgress:
    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None

    def __call__(self, event: dict):
        if not self.enabled:
            return
        kind = event.get("type")
        if kind == "start":
            self.bar = tqdm(total=event["max_steps"], initial=event.get("step", 0), unit="step", file=sys.stderr,
                            dynamic_ncols=True)
        elif kind == "step" and self.bar is not None:
            self.bar.update(event["step"] - self.bar.n)
            self.bar.set_postfix(loss=f"{event['loss']:.4f}", lr=f"{event['lr']:.2g}")
        elif kind == "validation":
            tqdm.write(validation_line(event), file=sys.stderr)
        elif kind in ("message", "saved", "preview"):
            text = event.get("text") or "saved " + ", ".join(event.get("files", [event.get("path", "")]))
            tqdm.write(text, file=sys.stderr)
        elif kind == "end" and self.bar is not None:
            self.bar.close()
            self.bar = None


def validation_line(event: dict) -> str:
    line = (f"step {event['step']}: validation loss {event['val_loss']:.6f} "
            f"(best {event['best_val_loss']:.6f} at step {event['best_step']})")
    if "norm_max" in event:
        line += (f"; vector norms mean {event['norm_mean']:.4f}, max {event['norm_max']:.4f} "
                 f"(init {event['init_norm_mean']:.4f}, typical token {event['token_norm']:.4f})")
    return line
