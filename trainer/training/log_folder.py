"""A run's log folder: ``<log dir>/<YYYY-MM-DD>/<name>/`` with its subfolders and the settings it ran with."""
import datetime
import json
from pathlib import Path

from common.files import atomic_write_text


def prepare_log_dir(cfg, subfolders, settings: dict) -> Path:
    """``<log dir>/<YYYY-MM-DD>/<name>/`` with its subfolders, and the complete settings as JSON in it."""
    log_dir = Path(cfg.log_dir) / datetime.date.today().isoformat() / cfg.name
    for sub in subfolders:
        (log_dir / sub).mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d-%H-%M-%S")
    atomic_write_text(log_dir / f"settings-{stamp}.json", json.dumps(dict(cfg.to_json(), **settings), indent=2))
    return log_dir
