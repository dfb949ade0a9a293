"""Faults a long run meets (issue 14): divergence, preemption signals, damaged checkpoints,
torn metrics, untrusted data and weight files, and user errors on the command line. Real
subprocesses, real signals and real corrupted checkpoints of a tiny run."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from flax import nnx

from bitjax.data import graphs
from bitjax.infer import export_packed, import_packed, pack_model
from bitjax.models import Decoder, DecoderConfig
from bitjax.sweep.runner import RESULT_FILE, RunsFailed, run_runs
from bitjax.sweep.spec import Run
from bitjax.train import train_and_evaluate
from bitjax.train.checkpoint import Checkpointer, DamagedCheckpoints, UnreadableCheckpoint
from bitjax.train.config import (ConfigError, load_config, model_config, resolve_config,
                                 validate_config)
from bitjax.train.metrics import MetricWriter, read_metrics
from bitjax.train.optim import make_optimizer
from bitjax.train.step import state_layout
from bitjax.train.tasks import get_task
from bitjax.train.trainer import (EXIT_INTERRUPTED, FAILED_FILE, NonFiniteError,
                                  make_config_mesh)
from multidevice import json_result, start_processes
from preemption import Preempted, preempt_after

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LM_CONFIG = os.path.join(ROOT, "configs", "lm.py")
# configs/lm.py:nano at seq_len 32, batch 4, ten steps: seconds on two cores.
TINY = {"train.seq_len": 32, "train.batch_size": 4, "train.steps": 10, "train.eval_every": 10,
        "train.eval_batches": 1, "train.log_every": 1, "train.checkpoint_every": 2,
        "train.max_checkpoints": 10, "train.progress_bar": False, "optim.warmup_steps": 2,
        "model.compute_dtype": "float32"}


def tiny_config(**overrides):
  return load_config(f"{LM_CONFIG}:nano", {**TINY, **overrides})


def restored_state(workdir, step):
  config = resolve_config(tiny_config())
  layout = state_layout(model_config(config), make_optimizer(config.optim, config.train.steps),
                        config.train.seed, make_config_mesh(config, get_task(config)), Decoder)
  checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"), None, for_reading=True)
  state, _ = checkpointer.restore(step, layout.abstract)
  checkpointer.close()
  return jax.tree.leaves(state)


def assert_same_state(workdir_a, workdir_b, step):
  for a, b in zip(restored_state(workdir_a, step), restored_state(workdir_b, step), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def losses(workdir):
  return {(r["step"], r["split"]): r["loss"] for r in read_metrics(workdir)}


# `reference` (conftest.py): one uninterrupted run of tiny_config(), checkpoints at 2, ..., 10.


# -- Non-finite guard ------------------------------------------------------------------------

def test_nonfinite_loss_stops_the_run_saves_nothing_nonfinite_and_leaves_a_marker(tmp_path):
  with pytest.raises(NonFiniteError, match=r"^step 2: grad_norm is nan .*stop.*no checkpoint"):
    train_and_evaluate(tiny_config(**{"optim.lr": 1e30, "model.precision": "bf16"}),
                       str(tmp_path))
  marker = json.loads((tmp_path / FAILED_FILE).read_text())
  assert marker["step"] == 2 and marker["last_checkpoint"] is None
  assert not (tmp_path / "summary.json").exists()
  assert not os.listdir(tmp_path / "checkpoints")


def test_skip_mode_keeps_finite_runs_bit_identical_and_stops_after_n_in_a_row(reference,
                                                                               tmp_path):
  skip = tmp_path / "skip"
  train_and_evaluate(tiny_config(**{"train.nonfinite": "skip"}), str(skip))
  assert losses(skip) == losses(reference)
  assert_same_state(reference, str(skip), 10)

  diverging = tmp_path / "diverging"
  with pytest.raises(NonFiniteError, match=r"3 skipped steps in a row "
                                           r"\(config.train.max_skipped_in_a_row=3\)"):
    train_and_evaluate(tiny_config(**{"optim.lr": 1e30, "train.nonfinite": "skip",
                                      "train.max_skipped_in_a_row": 3}), str(diverging))
  assert json.loads((diverging / FAILED_FILE).read_text())["step"] == 4
  for leaf in restored_state(str(diverging), 2):  # the update at step 2 was dropped
    assert np.isfinite(np.asarray(leaf)).all()


@pytest.mark.parametrize("field", ["optim.lr", "optim.b1", "optim.weight_decay"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nonfinite_config_floats_are_config_errors(field, value):
  with pytest.raises(ConfigError, match=rf"config.{field}={value} must be finite"):
    validate_config(tiny_config(**{field: value}))


def test_sweep_reports_a_failed_run_as_failed_and_does_not_retrain_it(tmp_path, capsys):
  runs = [Run(name, f"{LM_CONFIG}:nano", {}, {}) for name in ("done", "diverged")]
  (tmp_path / "done").mkdir()
  (tmp_path / "done" / RESULT_FILE).write_text(json.dumps({"name": "done", "labels": {},
                                                           "group": "g"}))
  (tmp_path / "diverged").mkdir()
  (tmp_path / "diverged" / FAILED_FILE).write_text(json.dumps({"step": 7, "reason": "loss is nan"}))
  with pytest.raises(RunsFailed, match=r"1 of 2 runs failed \(diverged: loss is nan\)"):
    run_runs(runs, str(tmp_path))
  assert "diverged: failed earlier: loss is nan" in capsys.readouterr().out


# -- Preemption --------------------------------------------------------------------------------

SIGNALLED_RUN = textwrap.dedent("""
    import os, signal, sys
    import bitjax.data
    make, (at, name) = bitjax.data.make_train_iterator, sys.argv[1:3]

    class SignalsItself:  # sends itself the signal while fetching its `at`-th batch
      def __init__(self, inner):
        self.inner, self.fetched = inner, 0
      def __next__(self):
        self.fetched += 1
        if self.fetched == int(at):
          os.kill(os.getpid(), getattr(signal, name))
        return next(self.inner)
      def get_state(self):
        return self.inner.get_state()
      def set_state(self, state):
        self.inner.set_state(state)

    bitjax.data.make_train_iterator = lambda *a, **k: SignalsItself(make(*a, **k))
    sys.argv = ["bitjax", "train", *sys.argv[3:]]
    from bitjax.__main__ import run
    run()
""")


def cli_args(workdir, **overrides):
  fields = {**TINY, "train.checkpoint_every": 4, **overrides}
  return [f"--config={LM_CONFIG}:nano", f"--workdir={workdir}",
          *(f"--config.{key}={value}" for key, value in fields.items())]


def subprocess_env():
  return {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}


def test_sigterm_and_sigint_save_at_the_step_and_resumes_are_bitwise_equal(reference, tmp_path):
  """Signals before the first step, at a checkpoint step and between checkpoints; each
  session exits 75 with one line, and the finished run equals the uninterrupted one."""
  workdir = tmp_path / "run"
  for fetched, name, saved_at in ((1, "SIGTERM", 1), (3, "SIGINT", 4), (3, "SIGTERM", 7)):
    done = subprocess.run([sys.executable, "-c", SIGNALLED_RUN, str(fetched), name,
                           *cli_args(workdir)], capture_output=True, text=True, cwd=ROOT,
                          env=subprocess_env(), timeout=300)
    assert done.returncode == EXIT_INTERRUPTED, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1] == (
        f"bitjax train: {name} at step {saved_at}: saved a checkpoint at step {saved_at}; "
        f"rerun the same command to resume (exit code {EXIT_INTERRUPTED})")
    assert Checkpointer(str(workdir / "checkpoints"), None, True).latest_step() == saved_at
  done = subprocess.run([sys.executable, "-m", "bitjax", "train", *cli_args(workdir)],
                        capture_output=True, text=True, cwd=ROOT, env=subprocess_env(),
                        timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  assert_same_state(reference, str(workdir), 10)
  records = read_metrics(str(workdir))  # one record per (step, split), as uninterrupted
  assert len(records) == len({(r["step"], r["split"]) for r in records})
  assert losses(workdir) == losses(reference)


# -- Resume hygiene and torn metrics ----------------------------------------------------------

def test_resume_keeps_one_record_per_step_and_skips_torn_lines(reference, tmp_path,
                                                               monkeypatch, caplog):
  import bitjax.data
  with monkeypatch.context() as patch:  # dies at step 7, after the checkpoint at 6
    patch.setattr(bitjax.data, "make_train_iterator",
                  preempt_after(bitjax.data.make_train_iterator, 7))
    with pytest.raises(Preempted):
      train_and_evaluate(tiny_config(), str(tmp_path))
  assert max(r["step"] for r in read_metrics(str(tmp_path))) == 7
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 8, "split": "tra')  # a write cut short
  train_and_evaluate(tiny_config(), str(tmp_path))
  assert f"{tmp_path / 'metrics.jsonl'}:8: skipped a torn line" in caplog.text
  records = read_metrics(str(tmp_path))
  assert sorted((r["step"], r["split"]) for r in records) == sorted(losses(reference))
  assert losses(tmp_path) == losses(reference)
  # TensorBoard: the resumed session's events purge the steps after the checkpoint.
  assert len(os.listdir(tmp_path / "tensorboard")) == 2
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write("not json\n")
  assert read_metrics(str(tmp_path)) == records


# -- Damaged checkpoints -----------------------------------------------------------------------

def _largest_array_file(step_dir):
  data = [os.path.join(root, name) for root, _, names in os.walk(step_dir / "state")
          for name in names if os.sep + "d" + os.sep in os.path.join(root, name) + os.sep]
  return max(data, key=os.path.getsize)


def _nan_values(step_dir):
  """The step's bytes replaced by a well-formed checkpoint holding a NaN in the optimizer
  state, as flipped bits in an uncompressed chunk read back. (Orbax compresses chunks
  with zstd, without a checksum: random flipped bytes there decode to finite garbage that
  no check can tell from weights.)"""
  layout, _ = _restore_setup()
  checkpointer = Checkpointer(str(step_dir.parent), None, for_reading=True)
  step = int(step_dir.name)
  state, data_state = checkpointer.restore(step, layout.abstract)
  checkpointer.close()
  mu = jax.tree.leaves(state.opt_state)[1]
  state = state.replace(opt_state=jax.tree.map(
      lambda leaf: leaf.at[(0,) * leaf.ndim].set(np.nan) if leaf is mu else leaf,
      state.opt_state))
  scratch = step_dir.parent.parent / "scratch"
  writer = Checkpointer(str(scratch), None)
  writer.save(step, state, data_state)
  writer.close()
  shutil.rmtree(step_dir)
  shutil.move(scratch / str(step), step_dir)


def _truncate(step_dir):
  path = _largest_array_file(step_dir)
  os.truncate(path, os.path.getsize(path) // 3)


def _bad_iterator_state(step_dir):
  (step_dir / "data" / "metadata").write_text(json.dumps({"window_index": "nonsense"}))


CORRUPTIONS = {
    "nan_values": (_nan_values, 10),
    "truncated_array": (_truncate, 10),
    "missing_metadata": (lambda d: os.remove(d / "state" / "_METADATA"), 10),
    "bad_iterator_state": (_bad_iterator_state, 10),
    "empty_step_folder": (lambda d: None, 12),  # a folder "12" with nothing in it
}


def _restore_setup():
  config = resolve_config(tiny_config())
  task = get_task(config)
  layout = state_layout(model_config(config), make_optimizer(config.optim, config.train.steps),
                        config.train.seed, make_config_mesh(config, task), Decoder)
  return layout, task.train_iterator(0, 1)


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_damaged_step_is_named_moved_aside_and_the_previous_step_restores(reference, tmp_path,
                                                                          case):
  corrupt, step = CORRUPTIONS[case]
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  step_dir = workdir / "checkpoints" / str(step)
  step_dir.mkdir(exist_ok=True)
  corrupt(step_dir)
  # An uncommitted save (Orbax's temporary folder) is never a step.
  (workdir / "checkpoints" / "14.orbax-checkpoint-tmp-1").mkdir()
  layout, iterator = _restore_setup()
  messages = []
  checkpointer = Checkpointer(str(workdir / "checkpoints"), 10)
  restored_step, _ = checkpointer.restore_newest_intact(layout.abstract, iterator.set_state,
                                                        messages.append)
  checkpointer.close()
  expected = 10 if step == 12 else 8
  assert restored_step == expected
  assert len(messages) == 1, messages
  assert messages[0].startswith(f"checkpoint step {step} is damaged (")
  assert messages[0].endswith(f"moved to {workdir / 'checkpoints.damaged' / str(step)}; "
                              f"resuming from step {expected}")
  assert (workdir / "checkpoints.damaged" / str(step)).is_dir()  # kept, not deleted
  assert (workdir / "checkpoints" / "14.orbax-checkpoint-tmp-1").is_dir()
  print(case, messages[0])


def test_a_run_resumes_past_a_damaged_step_to_the_uninterrupted_result(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  os.remove(workdir / "summary.json")  # as if it had died right after saving step 10
  _nan_values(workdir / "checkpoints" / "10")
  summary = train_and_evaluate(tiny_config(), str(workdir))
  assert summary["steps_this_session"] == 2
  assert_same_state(reference, str(workdir), 10)


def test_no_intact_step_is_an_error_naming_every_step(reference, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  for step in range(2, 11, 2):
    os.remove(workdir / "checkpoints" / str(step) / "state" / "_METADATA")
  layout, iterator = _restore_setup()
  checkpointer = Checkpointer(str(workdir / "checkpoints"), 10)
  with pytest.raises(DamagedCheckpoints, match=r"no checkpoint restores intact: step 10: .*"
                                               r"step 2: "):
    checkpointer.restore_newest_intact(layout.abstract, iterator.set_state, print)
  checkpointer.close()
  assert not (workdir / "checkpoints.damaged").exists()  # nothing moved without a fallback


class _TensorstoreError(ValueError):
  pass


@pytest.mark.parametrize("error", [
    ConnectionError("Connection reset by peer"),
    TimeoutError("read timed out"),
    _TensorstoreError("Error reading \"state/d/0\" in OCDBT database: UNAVAILABLE: "
                      "upstream connect error"),
    MemoryError(),
], ids=lambda e: type(e).__name__)
def test_a_failed_read_that_proves_no_damage_moves_nothing_and_names_the_step(
    reference, tmp_path, monkeypatch, error):
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  layout, iterator = _restore_setup()
  checkpointer = Checkpointer(str(workdir / "checkpoints"), 10)

  def unreachable(step, abstract_state):
    try:
      raise error
    except Exception as cause:  # as Orbax wraps what tensorstore raised
      raise RuntimeError(f"restoring step {step} failed") from cause

  monkeypatch.setattr(checkpointer, "restore", unreachable)
  with pytest.raises(UnreadableCheckpoint, match=r"could not read checkpoint step 10 \(Runtime"
                                                 r"Error: restoring step 10 failed\); this says "
                                                 r"nothing about the step, so it was left in "
                                                 r"place"):
    checkpointer.restore_newest_intact(layout.abstract, iterator.set_state, print)
  assert checkpointer.all_steps() == [2, 4, 6, 8, 10]
  checkpointer.close()
  assert not (workdir / "checkpoints.damaged").exists()


AGREEMENT = """
import json, signal
from bitjax.parallel import initialize_distributed, max_over_processes
initialize_distributed("auto")
import jax
from bitjax.sweep.runner import _lead_decides
from bitjax.train.trainer import StopRequests

me = jax.process_index()
largest = max_over_processes([7, 3][me])()
lead = _lead_decides([2, 1][me])  # a sweep's processes act on what the lead found
stop = StopRequests()
agreed = [stop.agreed()]  # nothing caught yet anywhere
if me == 1:  # only host 1 is signalled, after the first step
  stop.signal_name = "SIGINT"
agreed += [stop.agreed(), stop.agreed()]
print(json.dumps({"largest": largest, "lead": lead, "agreed": agreed}))
"""


def test_hosts_agree_on_the_largest_value_and_stop_at_the_same_step():
  """Two processes of one jax.distributed job: the signal one host caught at a step stops
  both at the next, as both must save that checkpoint together."""
  hosts = start_processes(AGREEMENT, 2, 1)
  assert [json_result(host, timeout=300) for host in hosts] == [
      {"largest": 7, "lead": 2, "agreed": [None, None, "SIGINT"]}] * 2


# -- Untrusted files ---------------------------------------------------------------------------

class _Payload:
  """Pickles as a call of `function(*args)`, as a tampered data file would."""

  def __init__(self, function, *args):
    self.function, self.args = function, args

  def __reduce__(self):
    return self.function, self.args


@pytest.mark.parametrize("make_payload", [
    lambda marker: _Payload(os.system, f"touch {marker}"),
    lambda marker: _Payload(eval, f"open({str(marker)!r}, 'w')"),
    lambda marker: _Payload(np.testing._private.utils.runstring,
                            f"open({str(marker)!r}, 'w')", {}),
], ids=["os.system", "builtins.eval", "numpy.runstring"])
def test_planetoid_loader_refuses_a_pickle_that_would_run_code(tmp_path, make_payload):
  from test_small_data import write_planetoid
  write_planetoid(tmp_path, "cora", np.random.default_rng(0))
  marker = tmp_path / "code-ran"
  (tmp_path / "ind.cora.graph").write_bytes(pickle.dumps(make_payload(marker), protocol=2))
  with pytest.raises(graphs.PlanetoidFormatError) as error:
    graphs.load_planetoid("cora", str(tmp_path))
  message = str(error.value)
  assert message.startswith(f"{tmp_path / 'ind.cora.graph'}: not a readable pickle")
  assert "refusing to load" in message and "\n" not in message
  assert not marker.exists()


def small_packed():
  config = DecoderConfig(precision="b1.58", vocab_size=96, hidden_size=32, num_layers=2,
                         num_heads=2, mlp_hidden_size=64, compute_dtype="float32")
  return pack_model(Decoder(config, rngs=nnx.Rngs(0)), backend="xla")[0]


def packed_values(model):
  return [np.asarray(leaf) for leaf in jax.tree.leaves(nnx.state(model))]


def test_import_packed_refuses_bad_files_naming_file_and_layer_and_leaves_the_model(tmp_path):
  path = tmp_path / "model.npz"
  export_packed(small_packed(), str(path))
  model = pack_model(Decoder(DecoderConfig(
      precision="b1.58", vocab_size=96, hidden_size=32, num_layers=2, num_heads=2,
      mlp_hidden_size=64, compute_dtype="float32"), rngs=nnx.Rngs(1)), backend="xla")[0]
  before = packed_values(model)

  not_zip = tmp_path / "model.pkl"
  not_zip.write_bytes(pickle.dumps({"format": "bitjax-ternary-v1"}))
  with pytest.raises(ValueError) as error:
    import_packed(model, str(not_zip))
  assert str(error.value).startswith(f"{not_zip}: not a packed-weights file")
  assert "allow_pickle" not in str(error.value)

  with np.load(path) as stored:
    arrays = dict(stored)
  last_layer = sorted(key for key in arrays if key.endswith(":scale"))[-1]
  arrays[last_layer] = np.full_like(arrays[last_layer], np.nan)
  bad = tmp_path / "nan_scale.npz"
  np.savez(bad, **arrays)
  with pytest.raises(ValueError, match=rf"^{bad}: layer {last_layer.split(':')[0]} has a "
                                       r"scale that is not all finite"):
    import_packed(model, str(bad))
  for a, b in zip(before, packed_values(model), strict=True):  # no layer was changed
    np.testing.assert_array_equal(a, b)


# -- One line for every user error -------------------------------------------------------------

def test_cli_user_errors_end_in_one_line_naming_what_is_wrong(tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("")
  unwritable = (tmp_path / "read_only" / "run") if os.geteuid() else "/proc/bitjax-run/x"
  if os.geteuid():
    (tmp_path / "read_only").mkdir(mode=0o555)
  workdir = f"--workdir={tmp_path / 'w'}"
  cases = {
      "misspelled field": ([f"--config={LM_CONFIG}:nano", "--config.train.stepz=3", workdir],
                           "--config.train.stepz: config.train has no field 'stepz'; it has ["),
      "misspelled section": ([f"--config={LM_CONFIG}:nano", "--config.trian.steps=3", workdir],
                             "--config.trian.steps: config has no field 'trian'; it has ["),
      "missing config file": ([f"--config={tmp_path}/nope.py:nano", workdir],
                              f"--config: file '{tmp_path}/nope.py' does not exist"),
      "bad config argument": ([f"--config={LM_CONFIG}:nano,precison=b1.58", workdir],
                              "config argument 'precison' is not one of ['size', 'precision']"),
      "bad value": ([f"--config={LM_CONFIG}:nano", "--config.optim.lr=nan", workdir],
                    "bad config: config.optim.lr=nan must be finite"),
      "workdir is a file": ([f"--config={LM_CONFIG}:nano", f"--workdir={a_file}"],
                            f"--workdir='{a_file}' exists and is not a directory"),
      "workdir not writable": ([f"--config={LM_CONFIG}:nano", f"--workdir={unwritable}"],
                               f"--workdir='{unwritable}' "),
  }
  processes = {case: subprocess.Popen([sys.executable, "-m", "bitjax", "train", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True, cwd=ROOT, env=subprocess_env())
               for case, (args, _) in cases.items()}
  for case, process in processes.items():
    _, stderr = process.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert process.returncode == 1 and len(lines) == 1, (case, stderr[-3000:])
    assert lines[0].startswith("bitjax train: ") and cases[case][1] in lines[0], (case, lines)
