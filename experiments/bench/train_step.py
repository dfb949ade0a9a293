"""Train-step time of b1.58 against BF16 for one decoder shape on one device (issue 5).

  python experiments/bench/train_step.py --batch_sizes 8,16,32,48 --out experiments/bench/train_step_h100.txt
  python experiments/bench/train_step.py --remat --batch_sizes 32,64,96 --out ...
  python experiments/bench/train_step.py --size tiny --batch_sizes 2,4 --steps 3  # CPU check

Times the trainer's own jitted, donated step (bitjax.train.step: AdamW with clipping,
the BF16 or b1.58 decoder) on random tokens, no data pipeline: each precision and batch
size is compiled, run `--warmup` times, then timed step by step (blocking on the result)
for `--steps` steps; the table gives the median. TFLOP/s and MFU count the analytic
6N + attention FLOPs per token (bitjax.models.train_flops_per_token; remat's recomputation
is not counted, as usual for MFU) against the chip's dense BF16 peak
(bitjax.train.metrics). A batch size that runs out of memory is reported as OOM.
Needs only jax, flax, optax and numpy (no ml_collections, grain, TFDS, tensorboardX).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from types import SimpleNamespace

# Let XLA use most of the GPU (jax preallocates 75% by default): the largest batch counts.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.95")

import jax  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from bitjax.models import DecoderConfig, train_flops_per_token  # noqa: E402
from bitjax.parallel import make_mesh  # noqa: E402
from bitjax.train.metrics import peak_tflops  # noqa: E402
from bitjax.train.optim import learning_rate_schedule, make_optimizer  # noqa: E402
from bitjax.train.step import batch_sharding, jit_train_step, state_layout  # noqa: E402

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
           "compile s")


def model_config(size: str, precision: str, remat: bool) -> DecoderConfig:
  hidden, glu, heads, layers, vocab, _ = SIZES[size]
  return DecoderConfig(vocab_size=vocab, hidden_size=hidden, num_layers=layers,
                       num_heads=heads, mlp_hidden_size=glu, tie_embeddings=False,
                       precision=precision, compute_dtype="bfloat16", remat=remat)


def is_out_of_memory(error: Exception) -> bool:
  message = str(error)
  return "RESOURCE_EXHAUSTED" in message or "out of memory" in message.lower()


def time_step(cfg: DecoderConfig, batch_size: int, seq_len: int, warmup: int,
              steps: int) -> tuple[float, float]:
  """(median step seconds, compile seconds) of the donated train step at `batch_size`."""
  mesh = make_mesh(devices=jax.devices()[:1])
  tx = make_optimizer(OPTIM, 1000, cfg.spec.quantized)
  layout = state_layout(cfg, tx, 0, mesh)
  batches = batch_sharding(mesh, batch_size, seq_len)
  tokens = jax.random.randint(jax.random.key(0), (batch_size, seq_len + 1), 0, cfg.vocab_size)
  batch = jax.device_put({"inputs": tokens[:, :-1], "targets": tokens[:, 1:]}, batches)
  step = jit_train_step(layout, tx, learning_rate_schedule(OPTIM, 1000, cfg.spec.quantized),
                        mesh, batches)
  start = time.perf_counter()
  compiled = step.lower(layout.abstract, batch).compile()
  compile_s = time.perf_counter() - start
  state = layout.init()
  for _ in range(warmup):
    state, _ = compiled(state, batch)
  jax.block_until_ready(state)
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics["loss"])
    times.append(time.perf_counter() - start)
  return statistics.median(times), compile_s


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
      cfg = model_config(args.size, precision, args.remat)
      row = {"batch": batch_size, "precision": precision}
      try:
        seconds, compile_s = time_step(cfg, batch_size, seq_len, args.warmup, args.steps)
      except Exception as e:  # jax's runtime error type moved between versions
        if not is_out_of_memory(e):
          raise
        row["status"] = "OOM"
      else:
        tokens_s = batch_size * seq_len / seconds
        tflops = tokens_s * train_flops_per_token(cfg, seq_len) / 1e12
        row.update(status="ok", step_ms=seconds * 1e3, tokens_s=tokens_s, tflops=tflops,
                   mfu=tflops / peak if peak else None, compile_s=compile_s)
        if precision == "bf16":
          bf16_ms = row["step_ms"]
        elif bf16_ms:
          row["ratio"] = row["step_ms"] / bf16_ms
      rows.append(row)
      print(format_row(row), flush=True)
      if args.out:
        with open(args.out, "w") as f:
          f.write(format_table(args, rows) + "\n")
      jax.clear_caches()  # free the compiled programs and buffers before the next size
      gc.collect()
  return rows


def format_row(row: dict) -> str:
  if row["status"] != "ok":
    cells = (row["batch"], row["precision"], "OOM", "", "", "", "", "")
  else:
    cells = (row["batch"], row["precision"], f"{row['step_ms']:.1f}",
             f"{row['tokens_s']:,.0f}", f"{row['tflops']:.2f}",
             "-" if row["mfu"] is None else f"{row['mfu']:.1%}",
             f"{row['ratio']:.3f}" if "ratio" in row else "", f"{row['compile_s']:.0f}")
  return "".join(f"{str(cell):>12}" for cell in cells)


def format_table(args, rows: list[dict]) -> str:
  device = jax.devices()[0]
  hidden, glu, heads, layers, vocab, seq_len = SIZES[args.size]
  peak = peak_tflops(device.device_kind)
  header = [
      f"train step, {args.size}: hidden {hidden}, GLU {glu}, {heads} heads, {layers} layers, "
      f"vocab {vocab}, sequence {seq_len}; remat {'on' if args.remat else 'off'}; "
      f"AdamW; bf16 compute",
      f"device: {device.device_kind} ({jax.device_count()} visible, 1 used), jax "
      f"{jax.__version__}, peak {peak or 'unknown'} TFLOP/s; median of {args.steps} steps "
      f"after {args.warmup} warm-up",
      "".join(f"{name:>12}" for name in COLUMNS),
  ]
  return "\n".join(header + [format_row(row) for row in rows])


def parse_args(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--size", choices=sorted(SIZES), default="700m")
  parser.add_argument("--batch_sizes", default="8,16,32",
                      type=lambda text: [int(x) for x in text.split(",")])
  parser.add_argument("--precisions", default="bf16,b1.58", type=lambda text: text.split(","))
  parser.add_argument("--remat", action="store_true", help="rematerialise every block")
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--steps", type=int, default=10, help="timed steps per configuration")
  parser.add_argument("--out", help="also write the table to this file")
  return parser.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  rows = run(args)
  print("\n" + format_table(args, rows))


if __name__ == "__main__":
  main()
