"""Sweeps that several processes share (issue 14, item 5): the only-if-absent create that
claims rest on, stale and live claims, two real processes splitting one sweep, and a
finished run whose stored config differs from what the sweep asks now."""

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

import bitjax.data
from bitjax import files
from bitjax.sweep import claims, runner
from bitjax.sweep.spec import load_sweep
from bitjax.train.config import load_config
from test_sweep import ROOT, write_sweep


def test_create_exclusive_creates_once_whole_and_leaves_no_temporary_file(tmp_path):
  path = str(tmp_path / "claim.json")
  assert files.create_exclusive(path, "first\n")
  assert not files.create_exclusive(path, "second\n")
  assert open(path).read() == "first\n"
  assert os.listdir(tmp_path) == ["claim.json"]
  results = []
  threads = [threading.Thread(target=lambda i=i: results.append(
      files.create_exclusive(str(tmp_path / "raced.json"), f"{i}\n"))) for i in range(8)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert sorted(results) == [False] * 7 + [True]
  assert sorted(os.listdir(tmp_path)) == ["claim.json", "raced.json"]


def make_claim(run_dir, epoch=0, host="otherhost", pid=12345, age=0.0):
  """The claim of epoch `epoch` on `run_dir` by host:pid, its heartbeat `age` s ago."""
  beat = time.time() - age
  return claims.Claim(os.path.join(run_dir, claims.CLAIMS_DIR, f"{epoch}.json"), epoch, host,
                      pid, beat, beat, f"token{epoch}")


def write_claim(run_dir, epoch=0, host="otherhost", pid=12345, age=0.0):
  os.makedirs(os.path.join(run_dir, claims.CLAIMS_DIR), exist_ok=True)
  claim = make_claim(run_dir, epoch, host, pid, age)
  with open(claim.path, "w") as f:
    f.write(claim.text())
  return claim


def dead_pid():
  done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True)
  return int(done.stdout)


@pytest.mark.parametrize("host, pid, age, reason", [
    ("otherhost", 12345, 100.0, "heartbeat 100 s ago, over the timeout of 60 s"),
    (socket.gethostname(), None, 0.0, "is gone"),  # this host, a process that has exited
])
def test_a_stale_claim_is_taken_over_with_the_next_epoch(tmp_path, host, pid, age, reason):
  run_dir = str(tmp_path)
  stale = write_claim(run_dir, 3, host, pid or dead_pid(), age)
  lines = []
  held = claims.acquire(run_dir, 60.0, lines.append)
  try:
    assert isinstance(held, claims.HeldClaim)
    assert (held.claim.epoch, held.claim.pid) == (4, os.getpid())
    assert len(lines) == 1 and lines[0].startswith(f"took over the claim of {stale.owner} (")
    assert reason in lines[0]
    assert os.listdir(tmp_path / claims.CLAIMS_DIR) == ["4.json"]  # the stale one tidied
    assert claims.current(run_dir).token == held.claim.token
  finally:
    held.release()
  assert claims.current(run_dir) is None


@pytest.mark.parametrize("host, pid", [("otherhost", 12345), (socket.gethostname(), None)])
def test_a_live_claim_is_not_taken_over(tmp_path, host, pid):
  run_dir = str(tmp_path)
  live = write_claim(run_dir, 0, host, pid or os.getppid(), age=50.0)
  lines = []
  found = claims.acquire(run_dir, 60.0, lines.append)
  assert isinstance(found, claims.Claim) and found.token == live.token and not lines
  assert os.listdir(tmp_path / claims.CLAIMS_DIR) == ["0.json"]


def test_a_held_claim_beats_and_notices_a_takeover(tmp_path):
  run_dir = str(tmp_path)
  lines = []
  held = claims.acquire(run_dir, 1.0, lines.append)  # a heartbeat every 0.1 s
  first = claims.current(run_dir).heartbeat
  time.sleep(0.5)
  assert claims.current(run_dir).heartbeat > first and not held.lost
  write_claim(run_dir, 1)  # another process took over while this one seemed hung
  time.sleep(0.5)
  assert held.lost and "claim was taken over by otherhost:12345" in lines[-1]
  held.release()
  assert sorted(os.listdir(tmp_path / claims.CLAIMS_DIR)) == ["0.json", "1.json"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
  """A one-run sweep trained to the end: (sweep file, workdir)."""
  root = tmp_path_factory.mktemp("finished")
  sweep = write_sweep(root, root / "tfds", precisions=("b1.58",))
  workdir = str(root / "runs")
  runner.run_sweep(sweep, workdir, log=lambda line: None)
  return sweep, workdir


def snapshot(directory):
  return {os.path.join(root, name): (open(os.path.join(root, name), "rb").read(),
                                     os.stat(os.path.join(root, name)).st_mtime_ns)
          for root, _, names in os.walk(directory) for name in names}


def test_a_changed_shared_override_is_refused_naming_the_run_and_field(finished, tmp_path):
  sweep, workdir = finished
  before = snapshot(workdir)
  changed = [run.__class__(run.name, run.config, {**run.overrides, "train.steps": 7}, run.labels)
             for run in load_sweep(sweep)]
  with pytest.raises(files.WorkdirError, match=r"^sweep run 'nano-b1.58': workdir .* holds a "
                                               r"run with a different config \(train.steps: "
                                               r"6 -> 7\)"):
    runner.run_runs(changed, workdir, log=lambda line: None)
  assert snapshot(workdir) == before
  lines = []
  assert [row["name"] for row in runner.run_sweep(sweep, workdir, log=lines.append)] == [
      "nano-b1.58"]
  assert lines == ["[1/1] nano-b1.58: finished earlier"] and snapshot(workdir) == before


def test_the_cli_refuses_a_changed_sweep_in_one_line(finished, tmp_path):
  sweep, workdir = finished
  text = open(sweep).read().replace("'train.steps': 6", "'train.steps': 8")
  (tmp_path / "changed.py").write_text(text)
  before = snapshot(workdir)
  done = subprocess.run([sys.executable, "-m", "bitjax", "sweep",
                         f"--config={tmp_path / 'changed.py'}", f"--workdir={workdir}"],
                        capture_output=True, text=True, cwd=ROOT, timeout=300,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT})
  assert done.returncode == 1
  assert done.stderr.strip().splitlines() == [
      f"bitjax sweep: sweep run 'nano-b1.58': workdir "
      f"{os.path.join(workdir, 'nano-b1.58')!r} holds a run with a different config "
      "(train.steps: 6 -> 8); use a new --workdir, or the same config to resume"]
  assert snapshot(workdir) == before


def test_a_sweep_waits_for_a_claimed_run_and_takes_it_over_when_stale(tmp_path):
  sweep = write_sweep(tmp_path, tmp_path / "tfds", precisions=("bf16",))
  workdir = tmp_path / "runs"
  write_claim(str(workdir / "nano-bf16"), 0, "otherhost", 12345, age=0.0)
  lines = []
  start = time.perf_counter()
  rows = runner.run_sweep(sweep, str(workdir), log=lines.append, claim_timeout=2.0)
  assert time.perf_counter() - start > 2.0  # it waited for the heartbeat to go stale
  assert lines[0].startswith("[1/1] nano-bf16: claimed by otherhost:12345, heartbeat ")
  assert lines[0].endswith(" s ago; training the others first")
  assert lines[1].startswith("[1/1] nano-bf16: claimed by otherhost:12345, heartbeat ")
  assert lines[1].endswith(" s ago; waiting")
  assert lines[2].startswith("[1/1] nano-bf16: took over the claim of otherhost:12345 "
                             "(heartbeat ")
  assert lines[3:] == ["[1/1] nano-bf16: training"]
  assert [row["name"] for row in rows] == ["nano-bf16"]
  assert os.listdir(workdir / "nano-bf16" / claims.CLAIMS_DIR) == []  # released


class Crashed(Exception):
  pass


def test_a_run_that_crashes_releases_its_claim(tmp_path, monkeypatch):
  import bitjax.train as train_lib

  def crash(config, run_dir):
    raise Crashed

  sweep = write_sweep(tmp_path, tmp_path / "tfds", precisions=("bf16",))
  monkeypatch.setattr(train_lib, "train_and_evaluate", crash)
  with pytest.raises(Crashed):
    runner.run_sweep(sweep, str(tmp_path / "runs"), log=lambda line: None)
  assert os.listdir(tmp_path / "runs" / "nano-bf16" / claims.CLAIMS_DIR) == []


SHARED_SWEEP = """
import sys
sys.argv = ["bitjax", "sweep", *sys.argv[1:]]
from bitjax.__main__ import run
run()
"""


def start_sweeps(sweep, workdir, env, count=2):
  """`count` processes running `bitjax sweep` of `sweep` on one `workdir` together."""
  return [subprocess.Popen([sys.executable, "-c", SHARED_SWEEP, f"--config={sweep}",
                            f"--workdir={workdir}", "--claim_timeout=60"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                           cwd=ROOT, env=env) for _ in range(count)]


def finish(processes):
  """Each process's (stdout, stderr), once all have exited 0."""
  outputs = [process.communicate(timeout=600) for process in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  return outputs


def assert_each_run_trained_once(outputs, sweep, workdir, local, steps):
  """The sweep processes' `outputs` show every run of `sweep` trained by exactly one of
  them, in one session of `steps` steps (one metrics record per step), no claim left, and
  each printed the report of every run. `workdir` as given to them; `local`: its files (a
  gs:// workdir downloaded, where a folder whose last object went is absent)."""
  names = [run.name for run in load_sweep(sweep)]
  trained = [line.split(": ")[0].split()[-1] for stdout, _ in outputs
             for line in stdout.splitlines() if line.endswith(": training")]
  assert sorted(trained) == sorted(names), [stdout for stdout, _ in outputs]
  for name in names:
    records = [json.loads(line) for line in open(os.path.join(local, name, "metrics.jsonl"))]
    assert len(records) == len({(r["step"], r["split"]) for r in records})
    with open(os.path.join(local, name, "summary.json")) as f:
      assert json.load(f)["steps_this_session"] == steps
    claims_dir = os.path.join(local, name, claims.CLAIMS_DIR)
    assert not os.path.exists(claims_dir) or os.listdir(claims_dir) == []
  for stdout, _ in outputs:
    lines = stdout.splitlines()
    last = max(i for i, line in enumerate(lines) if re.match(rf"\[\d/{len(names)}\] ", line))
    report = "\n".join(lines[last + 1:])
    assert all(name in report for name in names), stdout
    assert f"results: {workdir}/results.csv" in report


def test_two_processes_share_one_sweep_and_train_each_run_once(tmp_path):
  sweep = write_sweep(tmp_path, tmp_path / "tfds", precisions=("bf16", "b1.58"))
  workdir = tmp_path / "runs"
  first = load_sweep(sweep)[0]  # the corpus built once, here (two builds would race)
  bitjax.data.data_source(load_config(first.config, first.overrides).data, "train")
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  outputs = finish(start_sweeps(sweep, workdir, env))
  assert_each_run_trained_once(outputs, sweep, workdir, workdir, steps=6)
