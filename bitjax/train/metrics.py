"""Metric sinks (JSON lines and TensorBoard) and the derived language-model metrics."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
import time
import uuid

from absl import logging

from bitjax.parallel.chips import peak_tflops
from bitjax import files


def lm_metrics(loss_sum: float, tokens: float, bytes_: float) -> dict[str, float]:
  """Mean loss (nats/token), perplexity and bits per byte from summed eval statistics."""
  loss = loss_sum / tokens
  return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)),
          "bits_per_byte": loss_sum / math.log(2) / max(bytes_, 1.0)}


class MetricWriter:
  """Appends every record to workdir/metrics.jsonl and mirrors scalars to TensorBoard.

  In a remote (gs://) workdir, metrics.jsonl is rewritten whole on every record, earlier
  sessions' records included (files.RewrittenObject). TensorBoard events go to a local
  temporary directory, uploaded to workdir/tensorboard/ on close and at most every
  TB_UPLOAD_S seconds while training: tensorboardX writes gs:// only through
  google-cloud-storage (not in the `gcs` extra) and only to GCS and S3. Each session's event
  file name ends in a random suffix (tensorboardX names them by the second and host only),
  so an upload never replaces an earlier session's. A failed upload only warns and keeps
  the local copy: metrics.jsonl is the record, TensorBoard a mirror.
  """

  TB_UPLOAD_S = 60.0

  def __init__(self, workdir: str, start_step: int | None = None):
    """`start_step`: the step the run resumes from (0: a new run). Records of later steps,
    written by a session that ended before its next checkpoint, are dropped from
    metrics.jsonl before anything is appended, and TensorBoard is told to purge its events
    from step start_step + 1 on, so every (step, split) is recorded once. None keeps
    every record there."""
    from tensorboardX import SummaryWriter  # here: benchmarks use this module without it

    path = os.path.join(workdir, "metrics.jsonl")
    purge_step = None if start_step is None else start_step + 1
    if start_step is not None and files.exists(path):
      records, torn = _read_records(path)
      kept = [record for record in records if record["step"] <= start_step]
      if torn or len(kept) < len(records):
        files.write_atomic(path, "".join(json.dumps(record) + "\n" for record in kept))
    self.jsonl = files.open_append(path)
    tb_dir = os.path.join(workdir, "tensorboard")
    self.tb_remote = tb_dir if files.is_remote(workdir) else None
    if self.tb_remote:
      self.tb_dir = tempfile.mkdtemp(prefix="bitjax-tensorboard-")
      self.tb = SummaryWriter(self.tb_dir, filename_suffix=f".{uuid.uuid4().hex[:8]}",
                              purge_step=purge_step)
    else:
      self.tb_dir = tb_dir
      self.tb = SummaryWriter(tb_dir, purge_step=purge_step)
    self.tb_uploaded = time.monotonic()

  def write(self, step: int, split: str, scalars: dict[str, float]) -> None:
    record = {"step": int(step), "split": split, **{k: float(v) for k, v in scalars.items()}}
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for key, value in scalars.items():
      self.tb.add_scalar(f"{split}/{key}", float(value), int(step))
    if self.tb_remote and time.monotonic() - self.tb_uploaded >= self.TB_UPLOAD_S:
      self.tb.flush()
      self._upload_tensorboard()

  def _upload_tensorboard(self) -> bool:
    self.tb_uploaded = time.monotonic()
    try:
      files.upload_tree(self.tb_dir, self.tb_remote)
      return True
    except Exception as e:  # pylint: disable=broad-except  # a mirror must not end a run
      logging.warning("TensorBoard events not uploaded to %s (%s: %s); they are in %s",
                      self.tb_remote, type(e).__name__, e, self.tb_dir)
      return False

  def close(self, storage_failed: bool = False) -> None:
    """Flush and upload what is left. `storage_failed` (the workdir's store just failed):
    write nothing more there (each attempt would wait out the client's retries again);
    the TensorBoard events stay in the local directory, which a warning names."""
    if storage_failed:
      self.jsonl.closed = True
      self.tb.close()
      if self.tb_remote:
        logging.warning("TensorBoard events not uploaded to %s (its storage failed); they "
                        "are in %s", self.tb_remote, self.tb_dir)
      return
    try:
      self.jsonl.close()
    finally:
      self.tb.close()
      if self.tb_remote and self._upload_tensorboard():
        shutil.rmtree(self.tb_dir, ignore_errors=True)


def _read_records(path: str) -> tuple[list[dict], int]:
  """The records of a metrics.jsonl and how many torn lines were skipped (a write cut
  short by a crash or a full disk), each with a warning naming the file and line."""
  records, torn = [], 0
  for number, line in enumerate(files.read_text(path).split("\n"), 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get("step"), int):
        raise ValueError("not a record with an integer step")
    except ValueError:
      torn += 1
      logging.warning("%s:%d: skipped a torn line: %.60r", path, number, line)
      continue
    records.append(record)
  return records, torn


def read_metrics(workdir: str) -> list[dict]:
  """Every record of WORKDIR/metrics.jsonl; torn lines are skipped with a warning."""
  return _read_records(os.path.join(workdir, "metrics.jsonl"))[0]


def throughput_metrics(units_per_s: float, flops_per_unit: float, num_devices: int,
                       device_kind: str, unit: str = "tokens") -> dict[str, float]:
  """`unit`s/s, achieved TFLOP/s per device and, on known accelerators, MFU."""
  tflops = units_per_s * flops_per_unit / num_devices / 1e12
  out = {f"{unit}_per_s": units_per_s, "tflops_per_device": tflops}
  peak = peak_tflops(device_kind)
  if peak is not None:
    out["mfu"] = tflops / peak
  return out
