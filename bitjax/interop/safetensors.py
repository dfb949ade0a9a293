"""Reading and writing .safetensors files with numpy alone.

The format is an 8-byte little-endian header length, a JSON header naming each tensor's
dtype, shape and byte range, then the raw bytes. Reading it here (instead of through
torch or the safetensors package) keeps import and export free of torch, reads bf16
(numpy has no bf16: it comes back as float32), and lets a truncated or malformed file be
refused in one line that names it. Nothing in such a file is executed.
"""

from __future__ import annotations

import json
import os
import struct

import numpy as np

from bitjax.interop.errors import InteropError

# safetensors dtype name -> numpy dtype of the stored bytes (BF16 is widened on reading)
DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
          "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
          "BOOL": np.bool_}
NAMES = {np.dtype(v): k for k, v in DTYPES.items() if k != "BF16"}
MAX_HEADER_BYTES = 100_000_000


def read_header(path: str) -> tuple[dict, int]:
  """(tensor name -> {dtype, shape, data_offsets}, where the data starts) of `path`,
  checked against the file's size."""
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    prefix = f.read(8)
    if len(prefix) < 8:
      raise InteropError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    (length,) = struct.unpack("<Q", prefix)
    if length > min(MAX_HEADER_BYTES, size - 8):
      raise InteropError(f"{path}: truncated or not a safetensors file (header of {length} "
                         f"bytes in a file of {size})")
    try:
      header = json.loads(f.read(length))
    except ValueError:
      raise InteropError(f"{path}: not a safetensors file (its header is not JSON)") from None
  header.pop("__metadata__", None)
  start = 8 + length
  for name, entry in header.items():
    dtype = entry.get("dtype")
    if dtype not in DTYPES:
      raise InteropError(f"{path}: tensor {name!r} has dtype {dtype!r}, not one of "
                         f"{sorted(DTYPES)}")
    begin, end = entry["data_offsets"]
    expected = int(np.prod(entry["shape"], dtype=np.int64)) * np.dtype(DTYPES[dtype]).itemsize
    if end - begin != expected:
      raise InteropError(f"{path}: tensor {name!r} holds {end - begin} bytes, its shape "
                         f"{entry['shape']} needs {expected}")
    if start + end > size:
      raise InteropError(f"{path}: truncated safetensors file ({size} bytes; tensor {name!r} "
                         f"ends at byte {start + end})")
  return header, start


def read_tensor(path: str, header: dict, start: int, name: str) -> np.ndarray:
  """One tensor of a file whose header `read_header` returned, as numpy (bf16 as float32)."""
  entry = header[name]
  begin, end = entry["data_offsets"]
  with open(path, "rb") as f:
    f.seek(start + begin)
    data = np.frombuffer(f.read(end - begin), DTYPES[entry["dtype"]]).reshape(entry["shape"])
  if entry["dtype"] == "BF16":
    return (data.astype(np.uint32) << 16).view(np.float32)
  return data.copy()


def write(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None,
          bf16: frozenset[str] = frozenset()) -> None:
  """Write `tensors` to `path`; those named in `bf16` (float32 arrays) are stored as
  bfloat16, rounded to nearest even."""
  header, blobs, offset = {}, [], 0
  if metadata:
    header["__metadata__"] = metadata
  for name, array in tensors.items():
    array = np.ascontiguousarray(array)
    if name in bf16:
      bits = array.astype(np.float32).view(np.uint32)
      rounded = bits + 0x7FFF + ((bits >> 16) & 1)
      array, dtype = (rounded >> 16).astype(np.uint16), "BF16"
    else:
      dtype = NAMES[array.dtype]
    blob = array.tobytes()
    header[name] = {"dtype": dtype, "shape": list(array.shape),
                    "data_offsets": [offset, offset + len(blob)]}
    blobs.append(blob)
    offset += len(blob)
  encoded = json.dumps(header, separators=(",", ":")).encode()
  encoded += b" " * (-len(encoded) % 8)  # the data starts 8-byte aligned
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(encoded)))
    f.write(encoded)
    for blob in blobs:
      f.write(blob)
