"""Running a test script in a fresh interpreter that sees 8 virtual CPU devices."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_on_8_devices(script: str, *args: str) -> subprocess.Popen:
  """Start `script` in a fresh interpreter that sees 8 virtual CPU devices."""
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
         "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT}
  return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def json_result(process: subprocess.Popen, timeout: float = 600):
  """The JSON document `process` printed last; its stderr on failure."""
  stdout, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-4000:]
  return json.loads(stdout.strip().splitlines()[-1])
