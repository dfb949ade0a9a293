"""Train-step time of b1.58 against BF16 for one decoder shape on one device (issue 5).

  python experiments/bench/train_step.py --batch_sizes 8,16,32,48 --out experiments/bench/train_step_h100.txt
  python experiments/bench/train_step.py --remat --batch_sizes 32,64,96 --out ...
  python experiments/bench/train_step.py --size tiny --batch_sizes 2,4 --steps 3  # CPU check

Times the trainer's own jitted, donated step (bitjax.train.step: AdamW with clipping,
the BF16 or b1.58 decoder), built through the LM task (bitjax.train.tasks: model class,
loss, batch sharding and batch shapes) on random tokens, no data pipeline: each precision and batch
size is compiled, run `--warmup` times, then timed step by step (blocking on the result)
for `--steps` steps; the table gives the median. TFLOP/s and MFU count the analytic
6N + attention FLOPs per token (bitjax.models.train_flops_per_token; remat's recomputation
is not counted, as usual for MFU) against the chip's dense BF16 peak
(bitjax.train.metrics). "XLA GB" is the bytes XLA's cost model expects the step to move
(memory traffic: quantization adds elementwise passes over weights and activations).
`--breakdown` also times the loss alone (forward) and its gradient (forward + backward),
so the step splits into forward, backward and optimizer: where b1.58 pays over BF16.
`--profile DIR` writes a jax.profiler trace of a few steps of each row (TensorBoard /
Perfetto) and prints the accelerator time per step by kind of kernel (matmul, attention,
other fusions, copies) and the longest kernels. A batch size that runs out of memory is reported as OOM; each phase is
announced before it starts, so a slow compile shows where it is.
Needs only jax, flax, optax and numpy (no ml_collections, grain, TFDS, tensorboardX).
"""

from __future__ import annotations

import argparse
import collections
import gc
import glob
import gzip
import json
import os
import re
import statistics
import sys
import time
from types import SimpleNamespace

# Let XLA use most of the GPU (jax preallocates 75% by default): the largest batch counts.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402
import optax  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bitjax.models import DecoderConfig, train_flops_per_token  # noqa: E402
from bitjax.parallel import make_mesh  # noqa: E402
from bitjax.parallel.chips import peak_tflops  # noqa: E402
from bitjax.parallel.topology import compiled_cost  # noqa: E402
from bitjax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from bitjax.train.step import jit_train_step, state_layout  # noqa: E402
from bitjax.train.tasks import get_task  # noqa: E402

# (hidden, GLU hidden, heads, layers, vocab, sequence): `700m` is the BitNet b1.58 paper's
# 700M shape (configs/lm.py:700m); `tiny` only checks that the script runs.
SIZES = {
    "700m": (1536, 4096, 24, 24, 32000, 2048),
    "tiny": (64, 128, 2, 2, 256, 64),
}
# The paper recipe's optimizer fields (configs/lm.py), as make_optimizer reads them.
OPTIM = SimpleNamespace(schedule="constant", lr=1.5e-3, stage2_lr=1e-3, stage1_end_lr=None,
                        warmup_steps=0, b1=0.9, b2=0.95, eps=1e-8, weight_decay=0.1,
                        grad_clip=1.0)
COLUMNS = ("batch", "precision", "step ms", "tokens/s", "TFLOP/s", "MFU", "b1.58/bf16",
           "XLA GB", "compile s")
BREAKDOWN_COLUMNS = ("fwd ms", "fwd+bwd ms", "optim ms")


def model_config(size: str, precision: str, remat: bool, scan_layers: bool) -> DecoderConfig:
  hidden, glu, heads, layers, vocab, _ = SIZES[size]
  return DecoderConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                       num_heads=heads, mlp_hidden_size=glu, tie_embeddings=False,
                       precision=precision, compute_dtype="bfloat16", remat=remat,
                       scan_layers=scan_layers)


def is_out_of_memory(error: Exception) -> bool:
  message = str(error)
  return "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower()


def announce(message: str) -> None:
  print(f"  [{time.strftime('%H:%M:%S')}] {message}", flush=True)


def median_seconds(call, warmup: int, steps: int) -> float:
  """Median wall time of `call()` (which blocks on its result) after `warmup` calls."""
  for _ in range(warmup):
    call()
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    call()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def time_step(cfg: DecoderConfig, batch_size: int, seq_len: int, warmup: int, steps: int,
              breakdown: bool = False, profile_dir: str | None = None) -> dict:
  """Median seconds of the donated train step at `batch_size` (`step_s`), its compile
  time and XLA's byte count; with `breakdown` also of the loss (`forward_s`) and of its
  gradient (`backward_s`, forward included)."""
  # The fields of a config the LM task reads; no ml_collections needed.
  task = get_task(SimpleNamespace(task="lm", train=SimpleNamespace(batch_size=batch_size,
                                                                   seq_len=seq_len, seed=0)))
  mesh = make_mesh(devices=jax.devices()[:1])
  tx = make_optimizer(OPTIM, 1000)
  layout = state_layout(cfg, tx, 0, mesh, task.model_class)
  batches = task.batch_sharding(mesh)
  keys = jax.random.split(jax.random.key(0), len(task.batch_spec()))
  batch = jax.device_put({name: jax.random.randint(key, spec.shape, 0, cfg.vocab_size, spec.dtype)
                          for key, (name, spec) in zip(keys, task.batch_spec().items())},
                         batches)
  step = jit_train_step(layout, tx, learning_rate_schedule(OPTIM, 1000),
                        mesh, batches, task.loss)
  announce(f"compiling the {cfg.precision} step, batch {batch_size}")
  start = time.perf_counter()
  compiled = step.lower(layout.abstract, batch).compile()
  result = {"compile_s": time.perf_counter() - start,
            "xla_bytes": compiled_cost(compiled).get("bytes accessed")}
  announce(f"compiled in {result['compile_s']:.0f} s; timing")
  state = layout.init()

  def run_step():
    nonlocal state
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])

  result["step_s"] = median_seconds(run_step, warmup, steps)
  if breakdown:
    loss = lambda params, batch: task.loss(nnx.merge(layout.graphdef, params), batch, None)[0]
    # The gradient's norm keeps every gradient live without returning it.
    for key, fn in (("forward_s", jax.jit(loss)),
                    ("backward_s", jax.jit(lambda p, b: optax.tree.norm(jax.grad(loss)(p, b))))):
      announce(f"timing {key[:-2]} alone")
      result[key] = median_seconds(lambda: jax.block_until_ready(fn(state.params, batch)),
                                   warmup, steps)
  if profile_dir:
    trace_dir = os.path.join(profile_dir, f"{cfg.precision}_batch{batch_size}")
    announce(f"tracing {PROFILED_STEPS} steps to {trace_dir}")
    with jax.profiler.trace(trace_dir):
      for _ in range(PROFILED_STEPS):
        run_step()
    print(format_kernel_times(device_kernel_times(trace_dir), PROFILED_STEPS), flush=True)
  return result


PROFILED_STEPS = 3
# Kernel kinds by name, first match wins: cuBLAS/CUTLASS/Triton GEMMs and XLA's dot and
# convolution ops (TPU), attention kernels, copies, then the other XLA fusions.
KERNEL_KINDS = (("matmul", r"gemm|xmma|cutlass|nvjet|cublas|wgmma|matmul|dot|convolution"),
                ("attention", r"flash|fmha|attention|softmax"),
                ("copy / transpose", r"copy|transpose|memcpy|memset"),
                ("other fusions", r"."))


def device_kernel_times(trace_dir: str) -> dict[str, float]:
  """Total microseconds per kernel name on the accelerators in a jax.profiler trace
  (the Chrome trace.json.gz it writes), numbered copies of a name pooled
  ("loop_multiply_fusion_3" -> "loop_multiply_fusion"). Empty for a CPU-only trace."""
  totals = collections.Counter()
  for path in glob.glob(os.path.join(trace_dir, "plugins", "profile", "*", "*.trace.json.gz")):
    with gzip.open(path) as f:
      events = json.load(f)["traceEvents"]
    devices = {e["pid"] for e in events if e.get("ph") == "M" and e.get("name") == "process_name"
               and e["args"]["name"].startswith("/device:")}
    for e in events:
      if e.get("ph") == "X" and e["pid"] in devices:
        totals[re.sub(r"[._]\d+$", "", e["name"])] += e.get("dur", 0.0)
  return dict(totals)


def kernel_kind(name: str) -> str:
  return next(kind for kind, pattern in KERNEL_KINDS if re.search(pattern, name.lower()))


def format_kernel_times(times: dict[str, float], steps: int, top: int = 8) -> str:
  """Milliseconds per step by kernel kind, then the `top` longest kernels."""
  if not times:
    return "    (no accelerator kernels in the trace)"
  total = sum(times.values())
  kinds = collections.Counter()
  for name, micros in times.items():
    kinds[kernel_kind(name)] += micros
  line = lambda label, micros: (f"    {label[:60]:<60} {micros / steps / 1e3:9.2f} ms/step "
                                f"{micros / total:6.1%}")
  return "\n".join([line("accelerator busy", total)]
                   + [line(kind, micros) for kind, micros in kinds.most_common()]
                   + ["    longest kernels:"]
                   + [line(name, micros) for name, micros in
                      collections.Counter(times).most_common(top)])


def run(args) -> list[dict]:
  """Every batch size and precision in turn; the table so far is printed and written to
  --out after each, so a run cut short keeps what it measured."""
  print(format_table(args, []), flush=True)
  seq_len = SIZES[args.size][-1]
  device = jax.devices()[0]
  peak = peak_tflops(device.device_kind)
  rows = []
  for batch_size in args.batch_sizes:
    bf16_ms = None
    for precision in args.precisions:
      cfg = model_config(args.size, precision, args.remat, args.scan_layers)
      row = {"batch": batch_size, "precision": precision}
      try:
        measured = time_step(cfg, batch_size, seq_len, args.warmup, args.steps,
                             args.breakdown, args.profile)
      except Exception as e:  # jax's runtime error type moved between versions
        if not is_out_of_memory(e):
          raise
        row["status"] = "OOM"
      else:
        seconds = measured["step_s"]
        tokens_s = batch_size * seq_len / seconds
        tflops = tokens_s * train_flops_per_token(cfg, seq_len) / 1e12
        row.update(measured, status="ok", step_ms=seconds * 1e3, tokens_s=tokens_s,
                   tflops=tflops, mfu=tflops / peak if peak else None)
        if precision == "bf16":
          bf16_ms = row["step_ms"]
        elif bf16_ms:
          row["ratio"] = row["step_ms"] / bf16_ms
      rows.append(row)
      print(format_row(row, args.breakdown), flush=True)
      if args.out:
        with open(args.out, "w") as f:
          f.write(format_table(args, rows) + "\n")
      jax.clear_caches()  # free the compiled programs and buffers before the next size
      gc.collect()
  return rows


def format_row(row: dict, breakdown: bool = False) -> str:
  width = len(COLUMNS) + (len(BREAKDOWN_COLUMNS) if breakdown else 0)
  if row["status"] != "ok":
    cells = (row["batch"], row["precision"], "OOM") + ("",) * (width - 3)
  else:
    ms = lambda seconds: f"{seconds * 1e3:.1f}"
    cells = (row["batch"], row["precision"], f"{row['step_ms']:.1f}",
             f"{row['tokens_s']:,.0f}", f"{row['tflops']:.2f}",
             "-" if row["mfu"] is None else f"{row['mfu']:.1%}",
             f"{row['ratio']:.3f}" if "ratio" in row else "",
             "-" if row["xla_bytes"] is None else f"{row['xla_bytes'] / 1e9:.1f}",
             f"{row['compile_s']:.0f}")
    if breakdown:
      cells += (ms(row["forward_s"]), ms(row["backward_s"]),
                ms(row["step_s"] - row["backward_s"]))
  return "".join(f"{str(cell):>12}" for cell in cells)


def format_table(args, rows: list[dict]) -> str:
  device = jax.devices()[0]
  hidden, glu, heads, layers, vocab, seq_len = SIZES[args.size]
  peak = peak_tflops(device.device_kind)
  header = [
      f"train step, {args.size}: hidden {hidden}, GLU {glu}, {heads} heads, {layers} layers, "
      f"vocab {vocab}, sequence {seq_len}; remat {'on' if args.remat else 'off'}; "
      f"blocks {'scanned' if args.scan_layers else 'unrolled'}; "
      f"AdamW; bf16 compute",
      f"device: {device.device_kind} ({jax.device_count()} visible, 1 used), jax "
      f"{jax.__version__}, peak {peak or 'unknown'} TFLOP/s; median of {args.steps} steps "
      f"after {args.warmup} warm-up",
      "".join(f"{name:>12}"
              for name in COLUMNS + (BREAKDOWN_COLUMNS if args.breakdown else ())),
  ]
  return "\n".join(header + [format_row(row, args.breakdown) for row in rows])


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="700m")
  parser.add_argument("--batch_sizes", default="8,16,32",
                      type=lambda text: [int(x) for x in text.split(",")])
  parser.add_argument("--precisions", default="bf16,b1.58", type=lambda text: text.split(","))
  parser.add_argument("--remat", action="store_true", help="rematerialise every block")
  parser.add_argument("--scan_layers", action="store_true",
                      help="stack the blocks and run them with a scan (config.model.scan_layers)")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
  parser.add_argument("--breakdown", action="store_true",
                      help="also time forward and forward+backward alone (optimizer = the rest)")
  parser.add_argument("--profile", metavar="DIR", help="write a jax.profiler trace per row here")
  parser.add_argument("--out", help="also write the table to this file")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  print("\n" + format_table(args, rows))


if __name__ == "__main__":
  main()
