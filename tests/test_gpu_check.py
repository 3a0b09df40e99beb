"""bench/gpu_check.py: refuses without a GPU in one sentence; its --smoke mode runs every setting on the CPU."""
from helpers_cli import ROOT, run_subprocess


def test_gpu_check_refuses_without_a_gpu_and_smoke_runs_every_setting(tmp_path):
    out = run_subprocess([ROOT / "bench" / "gpu_check.py"], tmp_path)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.strip().startswith("error: no CUDA GPU here;") and len(out.stderr.strip().splitlines()) == 1
    out = run_subprocess([ROOT / "bench" / "gpu_check.py", "--smoke", "--steps", "2"], tmp_path)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.strip().startswith(("no ", "bf16 "))]
    assert [(row[0], row[1]) for row in rows] == [("no", "off"), ("no", "on"), ("bf16", "off"), ("bf16", "on")]
    for row in rows:
        assert float(row[2]) > 0 and float(row[3]) > 0 and row[-4:] == ["finished", "at", "step", "5"]
