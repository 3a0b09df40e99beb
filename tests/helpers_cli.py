"""Run the headless commands in-process (same code path as `python -m trainer`) and capture their output."""
import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from trainer.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def run_cli(argv, cwd: Path):
    """(exit code, stdout, stderr) of `python -m trainer <argv>` run in-process from `cwd`."""
    out, err = io.StringIO(), io.StringIO()
    old = os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in argv])
    finally:
        os.chdir(old)
    return code, out.getvalue(), err.getvalue()


def run_subprocess(args, cwd: Path, timeout=300):
    env = dict(os.environ, PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def workdir(tmp_path: Path) -> Path:
    """A working folder with the shipped templates, as a user's checkout has them."""
    (tmp_path / "textual_inversion_templates").symlink_to(ROOT / "textual_inversion_templates")
    return tmp_path
