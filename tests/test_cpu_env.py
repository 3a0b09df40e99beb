"""CPU defaults: passive OpenMP waits and huge-page allocation before torch loads, --threads, cached hashes."""
import json
import os
import subprocess
import sys

import pytest

from helpers_cli import ROOT, run_cli
from common.cpu_env import apply_cpu_defaults, set_threads
from common.errors import UserError
from trainer.models.hash_cache import CACHE_NAME, cached_sha256
from trainer.models.loading import checkpoint_hash

SPY = """
import os, sys
class Spy:
    seen = None
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and Spy.seen is None:
            Spy.seen = [os.environ.get("OMP_WAIT_POLICY"), os.environ.get("THP_MEM_ALLOC_ENABLE")]
        return None
sys.meta_path.insert(0, Spy())
import {module}
import torch
print(Spy.seen)
"""


def env_when_torch_loads(module: str, **extra) -> list:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "THP_MEM_ALLOC_ENABLE")}
    env.update(PYTHONPATH=str(ROOT), **extra)
    out = subprocess.run([sys.executable, "-c", SPY.format(module=module)], cwd=ROOT, env=env, text=True,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().replace("'", '"').replace("None", "null"))


@pytest.mark.parametrize("module", ["trainer.__main__", "preprocess.__main__", "app"])
def test_entry_points_set_passive_waits_and_huge_pages_before_torch_loads(module):
    assert env_when_torch_loads(module) == ["PASSIVE", "1"]


def test_the_users_own_settings_win():
    assert env_when_torch_loads("trainer.__main__", OMP_WAIT_POLICY="ACTIVE", THP_MEM_ALLOC_ENABLE="0") == [
        "ACTIVE", "0"]
    environ = {"OMP_WAIT_POLICY": "active"}
    assert apply_cpu_defaults(environ) == {"OMP_WAIT_POLICY": "active", "THP_MEM_ALLOC_ENABLE": "1"}


def test_threads_flag_sets_torch_threads_and_refuses_nonsense(tmp_path):
    code = ("from common.cpu_env import set_threads; set_threads(1); import os, torch; "
            "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)),
                         text=True, capture_output=True, timeout=120)
    assert out.stdout.split() == ["1", "1"]
    with pytest.raises(UserError, match="at least 1"):
        set_threads(0)
    code, _, err = run_cli(["list-embeddings", "--threads", "0"], tmp_path)
    assert code == 2 and err.strip() == "error: --threads must be a whole number of at least 1, not 0."
    import app

    assert app.parse_args(["--threads", "2"]).threads == 2
    assert app.main(["--threads", "0"]) == 2


def test_checkpoint_hash_is_remembered_by_path_size_and_mtime(tmp_path):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"abc")
    assert checkpoint_hash(path) == "ba7816bf8f"  # sha256("abc")
    cache_file = tmp_path / CACHE_NAME
    entries = json.loads(cache_file.read_text())
    assert entries[str(path.resolve())]["size"] == 3
    # The cache is trusted while size and mtime hold (so the file is not read again) ...
    entries[str(path.resolve())]["sha256"] = "f" * 64
    cache_file.write_text(json.dumps(entries))
    assert checkpoint_hash(path) == "ffffffffff"
    # ... and a rewritten file is hashed afresh.
    stat = path.stat()
    path.write_bytes(b"abd")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert cached_sha256(path) == "a52d159f262b2c6ddb724a61840befc36eb30c88877a4030b65cbe86298449c9"
    cache_file.write_text("{not json")  # an unreadable cache is ignored and replaced
    assert cached_sha256(path).startswith("a52d159f26")
    assert str(path.resolve()) in json.loads(cache_file.read_text())
