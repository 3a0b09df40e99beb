"""CPU defaults that hold under load, set by app.py and the command lines before torch is imported.

* ``OMP_WAIT_POLICY=PASSIVE``: OpenMP threads sleep between parallel regions instead of spinning. With the
  default active spin, two threads on a machine whose second core is busy (a browser, the web server, any other
  process) wait on each other for whole time slices: a 512 px step measured 5-7 s instead of 0.35 s.
* ``THP_MEM_ALLOC_ENABLE=1``: PyTorch's CPU allocator asks for transparent huge pages for large tensors, which
  cuts the page faults of big activations (VAE encoding at 512 px: about half the start-up time).

A value the user set in the environment wins. ``--threads N`` sets the number of intra-op threads (torch's
and OpenMP's). This module imports nothing heavy, so it can run before torch loads.
"""
import os

from common.errors import UserError

CPU_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE", "THP_MEM_ALLOC_ENABLE": "1"}


def apply_cpu_defaults(environ=None) -> dict:
    """Set each default the environment does not set already; returns the values now in effect."""
    environ = os.environ if environ is None else environ
    for key, value in CPU_DEFAULTS.items():
        environ.setdefault(key, value)
    return {key: environ[key] for key in CPU_DEFAULTS}


def add_threads_argument(parser):
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for torch (default: torch's choice, one per core)")


def set_threads(threads) -> None:
    """Use `threads` CPU threads (None: leave torch's default). Before torch loads this also sizes OpenMP's
    pool; afterwards torch.set_num_threads does it."""
    if threads is None:
        return
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise UserError(f"--threads must be a whole number of at least 1, not {threads!r}.")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ["MKL_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
