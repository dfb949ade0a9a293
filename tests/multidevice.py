"""Running a test script in fresh interpreters that see several virtual CPU devices,
as one process or as several hosts of one jax.distributed job on localhost."""

import json
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_processes(script: str, num_processes: int, devices_per_process: int,
                    *args: str) -> list[subprocess.Popen]:
  """Start `script` in `num_processes` fresh interpreters of `devices_per_process` CPU
  devices each; with more than one, they are the hosts of one job (JAX_COORDINATOR_ADDRESS,
  JAX_NUM_PROCESSES, JAX_PROCESS_ID, read by bitjax.parallel.initialize_distributed)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ROOT,
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
  for key in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    env.pop(key, None)
  if num_processes > 1:
    with socket.socket() as probe:  # a free port for the coordinator
      probe.bind(("localhost", 0))
      port = probe.getsockname()[1]
    env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes))
  return [subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, cwd=ROOT,
                           env={**env, "JAX_PROCESS_ID": str(i)} if num_processes > 1 else env)
          for i in range(num_processes)]


def run_on_8_devices(script: str, *args: str) -> subprocess.Popen:
  """Start `script` in a fresh interpreter that sees 8 virtual CPU devices."""
  return start_processes(script, 1, 8, *args)[0]


def json_result(process: subprocess.Popen, timeout: float = 600):
  """The JSON document `process` printed last; its stderr on failure."""
  stdout, stderr = process.communicate(timeout=timeout)
  assert process.returncode == 0, stderr[-4000:]
  return json.loads(stdout.strip().splitlines()[-1])
