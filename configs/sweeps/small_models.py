"""The seed paper's small-model comparisons (Nielsen et al., "When are 1.58 bits
enough?"): `configs/sweeps/small_models.py:PRESET[,seeds=N,hidden=H]`.

Presets:
  mlp      WideMLP on digits, breast_cancer, wine and the stdlib-package TF-IDF task
           x bf16 (16-bit), b1.58 (1.58-mean), b1.58-median, 1bit, and b1.58-ln (the
           paper's own BitLinear: LayerNorm without affine, 128/absmax, bias)
  gnn      SGC (K=2) on the Cora-shaped CSBM and karate club, GCN on the CSBM
           x the same five precisions
  encoder  masked-byte LM on 64-byte windows, 200 steps of 16, at hidden H and 2H
           x bf16, b1.58, b1.58-median, b1.58-ln
  encdec   span corruption of 64-byte windows, 200 steps of 16, at hidden H and 2H
           x the same four
  all      the four above (experiments/small_models)
Every cell runs `seeds` seeds (default 3): train.seed sets the initialisation, the
batch order and dropout; data splits stay fixed.
"""

import os

from bitjax.sweep.spec import make_runs, product
from bitjax.train.config import parse_config_arg

CONFIGS = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
PRESETS = ("mlp", "gnn", "encoder", "encdec", "all")
# b1.58 is BitNet b1.58's layer, b1.58-ln the 2411.05882 layer the paper trained with, so
# the sweep runs both layers the comparison is about.
ALL_PRECISIONS = ["bf16", "b1.58", "b1.58-median", "1bit", "b1.58-ln"]
TRANSFORMER_PRECISIONS = ["bf16", "b1.58", "b1.58-median", "b1.58-ln"]


def config_file(name: str) -> str:
  return os.path.join(CONFIGS, f"{name}.py")


def get_sweep(arg=None):
  args = parse_config_arg(arg, preset="all", seeds=3, hidden=64)
  if args.preset not in PRESETS:
    raise ValueError(f"sweep preset {args.preset!r} is not one of {list(PRESETS)}")
  seeds = {"train.seed": list(range(args.seeds))}
  families = PRESETS[:-1] if args.preset == "all" else [args.preset]
  runs = []
  if "mlp" in families:
    runs += make_runs(config_file("mlp"), product(
        dataset=["digits", "breast_cancer", "wine", "stdlib_packages"],
        precision=ALL_PRECISIONS, **seeds))
  if "gnn" in families:
    runs += make_runs(config_file("gnn"), [
        *product(dataset=["csbm", "karate_club"], architecture=["sgc"],
                 precision=ALL_PRECISIONS, **seeds),
        *product(dataset=["csbm"], architecture=["gcn"], precision=ALL_PRECISIONS, **seeds)])
  sizes = [args.hidden, 2 * args.hidden]
  # Windows of 64 bytes and 200 steps keep the Transformer runs within the CPU budget.
  if "encoder" in families:
    runs += make_runs(config_file("encoder"), product(
        task=["mlm"], hidden=sizes, precision=TRANSFORMER_PRECISIONS, **seeds),
        shared={"train.seq_len": 64, "train.steps": 200})
  if "encdec" in families:
    runs += make_runs(config_file("encdec"), product(
        objective=["span_corruption"], hidden=sizes, precision=TRANSFORMER_PRECISIONS,
        **seeds), shared={"train.seq_len": 64, "train.steps": 200, "data.target_len": 16})
  return runs
