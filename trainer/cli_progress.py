"""Engine events (`common.events`) -> a tqdm bar and plain lines on stderr, for the headless commands."""
import sys

from tqdm import tqdm

from common import events


class ConsoleProgress:
    """`enabled`: the bar and progress lines are printed (not with --quiet, nor on the other processes of a
    data-parallel run). Warnings are printed as they come when enabled, and kept in `warnings` for the command to
    repeat at the end, beside the result."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.warnings = []

    def __call__(self, event: events.Event):
        if isinstance(event, events.Warning):
            self.warnings.append(event.text)
        if not self.enabled:
            return
        match event:
            case events.Warning():
                tqdm.write(f"Warning: {event.text}", file=sys.stderr)
            case events.Started():
                self.bar = tqdm(total=event.max_steps, initial=event.step, unit="step", file=sys.stderr,
                                dynamic_ncols=True)
            case events.Step() if self.bar is not None:
                self.bar.update(event.step - self.bar.n)
                self.bar.set_postfix(loss=f"{event.loss:.4f}", lr=f"{event.lr:.2g}")
            case events.Validated():
                tqdm.write(validation_line(event), file=sys.stderr)
            case events.Message():
                tqdm.write(event.text, file=sys.stderr)
            case events.Saved():
                tqdm.write(f"saved {event.path}", file=sys.stderr)
            case events.Preview():
                tqdm.write("saved " + ", ".join(event.files), file=sys.stderr)
            case events.Ended() if self.bar is not None:
                self.bar.close()
                self.bar = None


def validation_line(event: events.Validated) -> str:
    line = (f"step {event.step}: validation loss {event.val_loss:.6f} "
            f"(best {event.best_val_loss:.6f} at step {event.best_step})")
    health = event.health
    if "norm_max" in health:
        line += (f"; vector norms mean {health['norm_mean']:.4f}, max {health['norm_max']:.4f} "
                 f"(init {health['init_norm_mean']:.4f}, typical token {health['token_norm']:.4f})")
    return line
