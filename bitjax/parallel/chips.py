"""The one table of accelerator chips: peak bf16 FLOP/s (for MFU and ideal step
times) and HBM per chip (for `python -m bitjax compile`), from the vendors' spec sheets,
not measured here."""

from __future__ import annotations

import dataclasses

GIB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
  """One accelerator. `device_kind` is matched as a case-insensitive substring of jax's
  device_kind; `generation` names a TPU in topology names ("v5e" in "v5e:4x4")."""

  device_kind: str
  peak_bf16_tflops: float  # dense
  hbm_gib: float | None = None  # None where cards differ (GPUs report their own memory)
  generation: str | None = None


# Matched in order, so "TPU v5 lite" (v5e) comes before its prefix "TPU v5" (v5p).
CHIPS = (
    Chip("TPU v6 lite", 918.0, 32, "v6e"),  # Trillium
    Chip("TPU v5 lite", 197.0, 16, "v5e"),
    Chip("TPU v5", 459.0, 95, "v5p"),
    Chip("TPU v4", 275.0, 32, "v4"),
    Chip("H200", 989.0),
    Chip("H100", 989.0),  # SXM; the PCIe card is lower (756)
    Chip("A100", 312.0),
)
# TPU generations as topology names spell them, in sorted order.
TPU_GENERATIONS = {chip.generation: chip
                   for chip in sorted((c for c in CHIPS if c.generation),
                                      key=lambda c: c.generation)}


def find_chip(device_kind: str) -> Chip | None:
  """The first chip of CHIPS whose kind is part of `device_kind`, or None (CPUs)."""
  for chip in CHIPS:
    if chip.device_kind.lower() in device_kind.lower():
      return chip
  return None


def peak_tflops(device_kind: str) -> float | None:
  """The chip's dense bf16 peak, or None where unknown (CPUs), so MFU is not reported."""
  chip = find_chip(device_kind)
  return chip.peak_bf16_tflops if chip else None


def chip_hbm_bytes(device_kind: str) -> int | None:
  """HBM per chip of `device_kind` ("TPU v5 lite"), or None where unknown."""
  chip = find_chip(device_kind)
  return int(chip.hbm_gib * GIB) if chip and chip.hbm_gib else None
