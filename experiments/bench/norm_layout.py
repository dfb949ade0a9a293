"""Median CPU train-step time of the two norm layouts (`config.model.norm_layout`), BF16
against b1.58, through the train-step benchmark's own `time_step` (the trainer's jitted,
donated step on random tokens).

  python experiments/bench/norm_layout.py --steps 20
"""

from __future__ import annotations

import argparse
import os
import sys

import jax

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from train_step import time_step  # noqa: E402

from bitjax.models import DecoderConfig  # noqa: E402

LAYOUTS = ("per_projection", "subln")
PRECISIONS = ("bf16", "b1.58")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30, help="timed steps (after 3 warm-up steps)")
  parser.add_argument("--batch_size", type=int, default=8)
  parser.add_argument("--seq_len", type=int, default=256)
  args = parser.parse_args(argv)
  print(f"{'layout':<16}{'precision':<10}{'step ms':>10}")
  for layout in LAYOUTS:
    for precision in PRECISIONS:
      cfg = DecoderConfig(vocab_size=264, hidden_size=256, num_layers=4, num_heads=4,
                          mlp_hidden_size=688, mlp_type="relu2_glu", tie_embeddings=True,
                          precision=precision, norm_layout=layout)
      result = time_step(cfg, args.batch_size, args.seq_len, warmup=3, steps=args.steps)
      print(f"{layout:<16}{precision:<10}{result['step_s'] * 1e3:>10.1f}", flush=True)
      jax.clear_caches()


if __name__ == "__main__":
  main()
