"""One writer per output folder (issue: two runs on one --output_dir silently replaced each other's checkpoints)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from anytext2_diffusers.training import run_lock
from anytext2_diffusers.training.run_lock import LOCK_FILE, OutputDirLocked, OutputLock

# The contenders are plain interpreters that load run_lock.py by path (stdlib only): importing the package
# would take seconds per process on a busy machine.
_CONTENDER = f"""
import importlib.util, json, os, sys, time
spec = importlib.util.spec_from_file_location("run_lock", {run_lock.__file__!r})
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
out, go, done = sys.argv[1:4]
while not os.path.exists(go):
    time.sleep(0.001)
try:
    lock = run_lock.OutputLock(out).acquire()
except run_lock.OutputDirLocked as err:
    print(json.dumps(["refused", os.getpid(), str(err)]), flush=True)
    sys.exit(0)
print(json.dumps(["holds", os.getpid(), ""]), flush=True)
if done == "hold":
    time.sleep(600)
while not os.path.exists(done):
    time.sleep(0.01)
lock.release()
"""


def _contender(out: str, go: str, done: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _CONTENDER, out, go, done], stdout=subprocess.PIPE, text=True)


def test_two_processes_racing_for_the_lock_one_wins_the_other_is_told_who(tmp_path):
    for round in range(3):  # who wins varies; exactly one always does
        out, go, done = str(tmp_path / "run"), str(tmp_path / f"go{round}"), str(tmp_path / f"done{round}")
        procs = [_contender(out, go, done) for _ in range(2)]
        open(go, "w").close()  # both are polling for it: they try at (nearly) the same moment
        outcome = sorted(json.loads(p.stdout.readline()) for p in procs)
        open(done, "w").close()
        for p in procs:
            assert p.wait(timeout=60) == 0
        (holds, winner, _), (refused, _, message) = outcome
        assert (holds, refused) == ("holds", "refused")
        # one line, naming the holder's pid and host and the lock file
        assert "\n" not in message and f"pid {winner} on {socket.gethostname()}" in message and LOCK_FILE in message
        assert not os.path.exists(os.path.join(out, LOCK_FILE)), "released on exit"


def test_a_lock_in_this_process_refuses_a_second_one_until_released(tmp_path):
    with OutputLock(str(tmp_path)):
        with open(tmp_path / LOCK_FILE) as f:
            holder = json.load(f)
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(OutputDirLocked, match=f"pid {os.getpid()}"):
            OutputLock(str(tmp_path)).acquire()
    OutputLock(str(tmp_path)).acquire().release()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": 0}))
    with caplog.at_level("WARNING"), OutputLock(str(tmp_path)):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "stale lock" in caplog.text and f"pid {dead.pid}" in caplog.text


def test_lock_left_by_another_host_is_not_taken_over(tmp_path):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"host": "some-other-node", "pid": 1234, "started": 0}))
    with pytest.raises(OutputDirLocked, match="pid 1234 on some-other-node.*delete"):
        OutputLock(str(tmp_path)).acquire()


def test_a_killed_holder_leaves_a_lock_the_next_run_takes(tmp_path):
    """SIGKILL: the kernel drops the flock; the file (with the dead pid) stays and is taken over."""
    go = tmp_path / "go"
    go.touch()
    holder = _contender(str(tmp_path), str(go), "hold")
    try:
        assert json.loads(holder.stdout.readline())[0] == "holds"
        with pytest.raises(OutputDirLocked, match=f"pid {holder.pid}"):
            OutputLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == holder.pid
    with OutputLock(str(tmp_path)):
        pass
