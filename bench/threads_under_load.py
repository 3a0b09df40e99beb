"""Training on a CPU whose second core is busy: one thread vs two threads with passive and with active OpenMP waits.

    python bench/threads_under_load.py [--size 256] [--steps 8] [--rounds 2] [--no-busy] [--timeout 300]

A busy process (a Python spin loop, at this process's niceness) occupies one core for the whole run, the way a
browser, the web server or any other job does on a small machine. Then the "mid" model trains an embedding
(train_embedding, batch 1, no previews) in fresh processes with
  * 1 thread,
  * 2 threads, OMP_WAIT_POLICY=PASSIVE (what app.py and the CLI set unless the user chose otherwise),
  * 2 threads, OMP_WAIT_POLICY=ACTIVE (spin-waiting threads: what the passive default avoids),
rounds interleaved so that machine noise hits all alike. Prints the best and median s/step of each and the
ratios to one thread. Two passive threads should be no slower than one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SETTINGS = (("1 thread", {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}),
            ("2 threads, passive", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "PASSIVE"}),
            ("2 threads, active", {"OMP_NUM_THREADS": "2", "OMP_WAIT_POLICY": "ACTIVE"}))


def child(size: int, steps: int, work: Path):
    sys.path.insert(0, str(HERE))
    import torch
    from train_speed import make_dataset, mid_model

    from common import events
    from trainer.embeddings.library import create_embedding
    from trainer.training.textual_inversion import train_embedding
    from trainer.training.config import TrainConfig

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    model = mid_model()
    if not (work / "data").is_dir():
        make_dataset(work / "data", size, 4)
    create_embedding(model.tokenizer, model.text_encoder, "load", init_text="photo", num_vectors=4,
                     embeddings_dir=work / "emb", overwrite=True)
    marks = []
    cfg = TrainConfig(name="load", dataset=str(work / "data"), log_dir="", width=size, height=size,
                      steps=steps + 2, save_every=0, preview_every=0, template="subject_filewords.txt",
                      save_optimizer_state=False, seed=0, latent_cache_dir=str(work / "cache"))
    train_embedding(model, cfg, work / "emb", Path(HERE.parent / "textual_inversion_templates"),
                    progress=lambda e: marks.append(time.perf_counter()) if isinstance(e, events.Step) else None)
    gaps = [b - a for a, b in zip(marks[2:], marks[3:])]
    print(json.dumps({"median": statistics.median(gaps), "threads": torch.get_num_threads()}))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-busy", action="store_true", help="do not start the busy process (e.g. when the "
                                                                   "machine is loaded already)")
    parser.add_argument("--timeout", type=float, default=300, help="seconds one training process may take")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.size, args.steps, Path(args.work))
    busy = None if args.no_busy else subprocess.Popen([sys.executable, "-c", "while True: pass"])
    results = {label: [] for label, _ in SETTINGS}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.rounds):
                for label, env in SETTINGS:
                    command = [sys.executable, __file__, "--child", "--size", str(args.size), "--steps",
                               str(args.steps), "--work", tmp]
                    try:
                        out = subprocess.run(command, env={**os.environ, **env}, capture_output=True, text=True,
                                             check=True, timeout=args.timeout)
                        results[label].append(json.loads(out.stdout.strip().splitlines()[-1])["median"])
                    except subprocess.TimeoutExpired:
                        results[label].append(float("inf"))  # printed as "inf": not done within --timeout
    finally:
        if busy is not None:
            busy.terminate()
            busy.wait()
    print(f"mid {args.size}px batch 1, {os.cpu_count()} cores, "
          f"{'a busy process on one core' if busy else 'no extra load'}; s/step (median within a run):")
    one = min(results["1 thread"])
    for label, times in results.items():
        print(f"  {label:>20}: best {min(times):.3f} s/step, median {statistics.median(times):.3f}, "
              f"vs 1 thread {min(times) / one:.2f}x")


if __name__ == "__main__":
    main()
