import os

import numpy as np
import pytest

# Tests run on CPU; keep XLA from grabbing every core for its own threads.
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")


@pytest.fixture
def rng(request):
  """A fresh random generator per test; its seed is printed, and BITJAX_TEST_SEED replays it."""
  seed = int(os.environ.get("BITJAX_TEST_SEED", np.random.SeedSequence().entropy % (2**32)))
  request.node.user_properties.append(("seed", seed))
  print(f"numpy seed {seed}")
  return np.random.default_rng(seed)
