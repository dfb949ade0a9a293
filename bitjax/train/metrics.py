"""Metric sinks (JSON lines and TensorBoard) and the derived language-model metrics."""

from __future__ import annotations

import json
import math
import os


def lm_metrics(loss_sum: float, tokens: float, bytes_: float) -> dict[str, float]:
  """Mean loss (nats/token), perplexity and bits per byte from summed eval statistics."""
  loss = loss_sum / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
          "bits_per_byte": loss_sum / math.log(2) / max(bytes_, 1.0)}


class MetricWriter:
  """Appends every record to workdir/metrics.jsonl and mirrors scalars to TensorBoard."""

  def __init__(self, workdir: str):
    from tensorboardX import SummaryWriter  # here: benchmarks use this module without it

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


# Dense bf16 peak per chip in TFLOP/s, from the vendors' spec sheets (not measured here).
# Matched against jax's device_kind in order, so "TPU v5 lite" (v5e) comes before "TPU v5".
PEAK_BF16_TFLOPS = (
    ("TPU v6 lite", 918.0),  # v6e (Trillium)
    ("TPU v5 lite", 197.0),  # v5e
    ("TPU v5", 459.0),  # v5p
    ("TPU v4", 275.0),
    ("H200", 989.0),
    ("H100", 989.0),  # SXM; the PCIe card is lower (756)
    ("A100", 312.0),
)


def peak_tflops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak, or None where unknown (CPUs), so MFU is not reported."""
  for name, peak in PEAK_BF16_TFLOPS:
    if name.lower() in device_kind.lower():
      return peak
  return None


def throughput_metrics(tokens_per_s: float, flops_per_token: float, num_devices: int,
                       device_kind: str) -> dict[str, float]:
  """tokens/s, achieved TFLOP/s per device and, on known accelerators, MFU."""
  tflops = tokens_per_s * flops_per_token / num_devices / 1e12
  out = {"tokens_per_s": tokens_per_s, "tflops_per_device": tflops}
  peak = peak_tflops(device_kind)
  if peak is not None:
    out["mfu"] = tflops / peak
  return out
