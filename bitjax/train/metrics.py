"""Metric sinks (JSON lines and TensorBoard) and the derived language-model metrics."""

from __future__ import annotations

import json
import math
import os

from tensorboardX import SummaryWriter


def lm_metrics(loss_sum: float, tokens: float, bytes_: float) -> dict[str, float]:
  """Mean loss (nats/token), perplexity and bits per byte from summed eval statistics."""
  loss = loss_sum / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
          "bits_per_byte": loss_sum / math.log(2) / max(bytes_, 1.0)}


class MetricWriter:
  """Appends every record to workdir/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a")
    self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for key, value in scalars.items():
      self.tb.add_scalar(f"{split}/{key}", float(value), int(step))

  def close(self) -> None:
    self.jsonl.close()
    self.tb.close()


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
