"""SIGKILL a real demo run at random moments, resume it after each kill, and compare it with a run that was
never interrupted.

    OMP_NUM_THREADS=1 python benchmarks/fault_injection.py --kills 20 --steps 24

The runs are ``examples/train_anytext2.py --demo`` made cheap (64 px, 4 images, no OCR losses, one sampler
step for the final validation) with a checkpoint after every step, all started with
``--resume_from_checkpoint latest``. A quarter of the kills land at a random moment of start-up (lock,
recovery of partial checkpoints, resume), the others at a random moment within three steps after training
starts (steps, checkpoint writes and swaps; once the run has reached its last step, the final validation and
the final folder). After the kills one more start runs to the end. Printed per kill, then JSON on the last line:

* ``kills`` (SIGKILLs delivered), ``resumes`` (starts that resumed from a checkpoint);
* ``checkpoints_lost``: steps saved (logged ``saved checkpoint-N``) before a kill that the next start did
  not resume from; the checkpoint being written when the kill came is not counted (goal 0);
* ``stale_locks_taken_over``, ``partials_promoted``: what the starts found and repaired;
* ``final_weights_equal``: every tensor of the final pipeline folder equals the uninterrupted run's
  (``max_abs_diff``); resume is exact, so this must hold.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from safetensors.torch import load_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED = re.compile(r"saved \S*checkpoint-(\d+) \(")
RESUMED = re.compile(r"resumed from \S*checkpoint-(\d+) at step")
STARTED = re.compile(r"\d+ train samples, \d+ batches per epoch")  # logged just before the first step


def command(output_dir: str, steps: int) -> list[str]:
    return [
        sys.executable,
        os.path.join(ROOT, "examples", "train_anytext2.py"),
        "--demo",
        "--output_dir",
        output_dir,
        "--resolution",
        "64",
        "--demo_samples",
        "4",
        "--max_train_steps",
        str(steps),
        "--checkpointing_steps",
        "1",
        "--validation_steps",
        "0",
        "--num_validation_images",
        "1",
        "--validation_num_inference_steps",
        "1",
        "--loss_alpha",
        "0",
        "--loss_beta",
        "0",
        "--report_to",
        "none",
        "--resume_from_checkpoint",
        "latest",
    ]


def start(output_dir: str, steps: int, log: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), PYTHONUNBUFFERED="1")
    with open(log, "w") as f:
        return subprocess.Popen(command(output_dir, steps), stdout=f, stderr=subprocess.STDOUT, env=env)


def read(log: str) -> str:
    with open(log, errors="replace") as f:
        return f.read()


def wait_for(proc: subprocess.Popen, log: str, pattern: re.Pattern, timeout: float) -> float | None:
    """Seconds until ``pattern`` appears in the log (None: the process ended or the time ran out first)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pattern.search(read(log)):
            return time.monotonic() - t0
        if proc.poll() is not None:
            return None
        time.sleep(0.05)
    return None


def final_tensors(folder: str) -> dict:
    out = {}
    for path in sorted(glob.glob(os.path.join(folder, "*", "*.safetensors"))):
        if os.path.relpath(path, folder).startswith(("checkpoint-", "demo_data")):
            continue
        for key, value in load_file(path).items():
            out[f"{os.path.relpath(path, folder)}:{key}"] = value
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="default: a temporary folder, removed at the end")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = args.workdir or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(work, exist_ok=True)

    # The uninterrupted run: reference weights, and the time scales for the kills.
    t0 = time.monotonic()
    reference = start(os.path.join(work, "straight"), args.steps, os.path.join(work, "straight.log"))
    started = wait_for(reference, os.path.join(work, "straight.log"), STARTED, timeout=3600)
    if reference.wait() != 0 or started is None:
        sys.exit(f"the uninterrupted run failed: see {os.path.join(work, 'straight.log')}")
    total = time.monotonic() - t0
    step_time = max(0.1, (total - started) / args.steps)
    print(f"uninterrupted: {total:.0f}s, training after {started:.0f}s, ~{step_time:.1f}s per step (with its saves)")

    out = os.path.join(work, "killed")
    kills = resumes = lost = stale = promoted = 0
    last_saved = 0
    for i in range(args.kills + 1):
        log = os.path.join(work, f"run{i:02d}.log")
        proc = start(out, args.steps, log)
        final = i == args.kills
        if not final:
            if rng.random() < 0.25:
                time.sleep(rng.uniform(0, started))
            else:
                wait_for(proc, log, STARTED, timeout=3600)
                time.sleep(rng.uniform(0, 3 * step_time))
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
        code = proc.wait()
        text = read(log)
        resumed = RESUMED.search(text)
        resumed_at = int(resumed.group(1)) if resumed else 0
        resumes += bool(resumed)
        lost += max(0, last_saved - resumed_at)
        stale += "taking over the stale lock" in text
        promoted += len(re.findall(r"promoted \S+ to ", text))
        saved = [int(s) for s in SAVED.findall(text)]
        last_saved = max([resumed_at, *saved])
        print(
            f"start {i:2d}: resumed at {resumed_at:2d}, saved up to {last_saved:2d}, "
            + ("ran to the end" if code == 0 else f"killed (exit {code})"),
            flush=True,
        )
        if final and code != 0:
            sys.exit(f"the last start failed: see {log}")

    a, b = final_tensors(os.path.join(work, "straight")), final_tensors(out)
    same_keys = sorted(a) == sorted(b) and len(a) > 0
    diff = max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if same_keys else None
    result = dict(
        kills=kills,
        resumes=resumes,
        checkpoints_lost=lost,
        stale_locks_taken_over=stale,
        partials_promoted=promoted,
        steps=args.steps,
        tensors_compared=len(a),
        max_abs_diff=diff,
        final_weights_equal=bool(same_keys and diff == 0.0),
        uninterrupted_seconds=round(total, 1),
    )
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
