import os

import numpy as np
import pytest

# Tests run on CPU; keep XLA from grabbing every core for its own threads.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
# With libtpu installed (the `tpu` extra, for the AOT tests) jax would probe for a TPU in
# every process and hold libtpu's one-process lock; the suite runs on CPU devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
  """One uninterrupted run of tests/test_faults.py's tiny_config() (checkpoints at steps 2,
  4, ..., 10), which interrupted and resumed runs are compared with, bit for bit; shared by
  test_faults.py and test_gcs_emulator.py, which only read it."""
  from bitjax.train import train_and_evaluate
  from test_faults import tiny_config

  workdir = str(tmp_path_factory.mktemp("reference"))
  train_and_evaluate(tiny_config(), workdir)
  return workdir


@pytest.fixture
def rng(request):
  """A fresh random generator per test; its seed is printed, and BITJAX_TEST_SEED replays it."""
  seed = int(os.environ.get("BITJAX_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))
  request.node.user_properties.append(("seed", seed))
  print(f"numpy seed {seed}")
  return np.random.default_rng(seed)


def write_python_corpus(root, files: int):
  """`files` small Python modules under root/corpus (a text_dir corpus the tests train on);
  returns that directory."""
  corpus = root / "corpus"
  corpus.mkdir()
  for i in range(files):
    (corpus / f"m{i}.py").write_text(f"def f{i}(x):\n    return x * {i}\n\n" * 30)
  return corpus
