"""bitjax b1.58 decoders -> GGUF for llama.cpp's `bitnet` architecture.

Tensor names come from the Hugging Face mapping (hf.tensor_names) through the gguf
package's own map to llama.cpp names, so there is one table of bitjax parameters.

Ternary projections are written as their codes in TQ2_0 (or TQ1_0) with the absmean scale
beside them as an F32 `.scale` tensor, which llama.cpp's bitnet graph multiplies into the
matmul: the codes have block scale 1 (exact in float16), so the file holds the forward
pass's weights codes * scale exactly, with no float16 rounding of the scale. A matrix
whose input width is not a multiple of the 256-wide TQ blocks is written as F16 codes
(exact too), as llama.cpp's converter falls back. Embeddings are F16 (the largest tensor,
llama.cpp's choice), norms F32.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np

from bitjax.interop.errors import InteropError
from bitjax.interop.hf import _exportable, tensor_names
from bitjax.models.decoder import DecoderConfig

ARCHITECTURE = "bitnet"
TERNARY_TYPES = ("tq2_0", "tq1_0")
# bitjax mlp_type -> `bitnet.hidden_activation` (llama.cpp reads relu2 as relu²; files
# without the key run SiLU).
ACTIVATIONS = {"relu2_glu": "relu2", "swiglu": "silu"}
# Hugging Face BitNet names the gguf package's map does not know (it has 1bitLLM's).
SUB_NORMS = {"self_attn.attn_sub_norm": "ATTN_SUB_NORM", "mlp.ffn_sub_norm": "FFN_SUB_NORM"}
# Pre-tokenizer regexes of byte-level BPE tokenizers -> llama.cpp's `tokenizer.ggml.pre`.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?"
                r"[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def _gguf():
  try:
    import gguf
  except ImportError:
    raise InteropError("export_gguf needs the gguf package (pip install -e \".[hf]\")") from None
  return gguf


def check_exportable(cfg: DecoderConfig, where: str) -> None:
  """InteropError naming the field for a decoder llama.cpp's bitnet architecture cannot
  run: it is b1.58 in the SubLN layout with a tied LM head and q width = hidden."""
  if not cfg.spec.quantized:
    raise InteropError(f"{where}: config.model.precision={cfg.precision!r}; GGUF export "
                       "writes ternary b1.58 models (export_hf a full-precision model and "
                       "convert it with llama.cpp's convert_hf_to_gguf.py)")
  if cfg.norm_layout != "subln":
    raise InteropError(f"{where}: config.model.norm_layout={cfg.norm_layout!r}; llama.cpp's "
                       "bitnet architecture has the 'subln' layout (train with "
                       "--config.model.norm_layout=subln)")
  _exportable(cfg, where)  # RMSNorm, a known MLP, b1.58's exact recipe, q width = hidden
  if not cfg.tie_embeddings:
    raise InteropError(f"{where}: config.model.tie_embeddings=False; llama.cpp's bitnet "
                       "architecture reads the LM head from the token embedding")


def _gguf_name(gguf, hf_name: str, name_map) -> str:
  """llama.cpp's name of a Hugging Face BitNet tensor."""
  name = name_map.get_name(hf_name, try_suffixes=(".weight",))
  if name is not None:
    return name
  block = hf_name.split(".")[2]
  for suffix, tensor in SUB_NORMS.items():
    if hf_name == f"model.layers.{block}.{suffix}.weight":
      return gguf.TENSOR_NAMES[gguf.MODEL_TENSOR[tensor]].format(bid=block) + ".weight"
  raise InteropError(f"{hf_name}: no llama.cpp bitnet tensor for it")


def gguf_tensors(model, ternary_type) -> list[tuple[str, np.ndarray, object]]:
  """(llama.cpp name, data, GGML type) of every tensor of a b1.58 SubLN decoder, in
  [out, in] order; ternary kernels become codes (quantized with `ternary_type`, F16 where
  rows do not fill its blocks) and their F32 `.scale`."""
  gguf = _gguf()
  from bitjax.models.transformer import convert_layers
  from bitjax.quant.quantizers import quantize_weight
  from flax import nnx

  model = convert_layers(model, scan=False)
  cfg = model.cfg
  flat = dict(nnx.to_flat_state(nnx.state(model)))
  name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BITNET, cfg.num_layers)
  block_size = gguf.GGML_QUANT_SIZES[ternary_type][0]
  types = gguf.GGMLQuantizationType
  tensors = []
  for hf_name, path in tensor_names(cfg, "bitnet").items():
    name = _gguf_name(gguf, hf_name, name_map)
    value = flat[path][...]
    if path[0] == "layers" and path[-1] == "kernel":
      codes, scale = quantize_weight(value, cfg.spec.weight)
      codes = np.asarray(codes, np.float32).T.copy()  # [out, in]: GGUF rows are outputs
      qtype = ternary_type if codes.shape[-1] % block_size == 0 else types.F16
      tensors.append((name, gguf.quants.quantize(codes, qtype), qtype))
      tensors.append((name[:-len(".weight")] + ".scale",
                      np.asarray([scale], np.float32), types.F32))
    elif path[0] == "embed":
      tensors.append((name, np.asarray(value, np.float16), types.F16))
    else:
      tensors.append((name, np.asarray(value, np.float32), types.F32))
  return tensors


def _vocabulary(tokenizer, vocab_size: int, where: str) -> dict:
  """tokenizer.ggml.* of the run's tokenizer, padded to the model's vocab_size with
  unused tokens: the byte tokenizer as GPT-2 byte-level tokens without merges (one token
  a byte, as bitjax encodes), a byte-level BPE tokenizer.json as it is."""
  gguf = _gguf()
  from bitjax.data.tokenizers import SPECIAL_TOKENS, _byte_level_alphabet

  token_type = gguf.TokenType
  tokens, types = {}, {}
  if tokenizer.kind == "byte":
    pre, merges = "default", []
    for i, special in enumerate(SPECIAL_TOKENS[:tokenizer.offset]):
      tokens[i], types[i] = special, token_type.CONTROL
    for char, byte in _byte_level_alphabet().items():
      tokens[tokenizer.offset + byte], types[tokenizer.offset + byte] = char, token_type.NORMAL
  elif tokenizer.kind == "bpe":
    spec = tokenizer._spec
    pre = _pre_tokenizer(spec, where)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    for token, index in spec["model"]["vocab"].items():
      tokens[index], types[index] = token, token_type.NORMAL
    for added in spec.get("added_tokens", []):
      tokens[added["id"]] = added["content"]
      types[added["id"]] = token_type.CONTROL if added["special"] else token_type.USER_DEFINED
  else:
    raise InteropError(f"{where}: data.tokenizer={tokenizer.kind!r}; GGUF export writes the "
                       "byte tokenizer or a byte-level BPE tokenizer.json")
  if max(tokens) >= vocab_size:
    raise InteropError(f"{where}: the tokenizer has ids up to {max(tokens)}, beyond the "
                       f"model's vocab_size={vocab_size}")
  return {
      "model": "gpt2", "pre": pre, "merges": merges,
      "tokens": [tokens.get(i, f"[PAD{i}]") for i in range(vocab_size)],
      "types": [int(types.get(i, token_type.UNUSED)) for i in range(vocab_size)],
      "bos": tokenizer.bos_id, "eos": tokenizer.eos_id, "pad": tokenizer.pad_id,
  }


def _pre_tokenizer(spec: dict, where: str) -> str:
  """llama.cpp's name for a tokenizer.json's pre-tokenization: GPT-2's regex (bitjax's own
  BPE), LLaMA 3's (the released BitNet models), else "default" (llama.cpp warns)."""
  if spec["model"].get("type") != "BPE" or "ByteLevel" not in json.dumps(
      [spec.get("pre_tokenizer"), spec.get("decoder")]):
    raise InteropError(f"{where}: the tokenizer.json is not a byte-level BPE; GGUF export "
                       "writes llama.cpp's gpt2 vocabulary")
  pre = spec.get("pre_tokenizer") or {}
  steps = pre.get("pretokenizers", [pre])
  if any(s.get("type") == "ByteLevel" and s.get("use_regex", True) for s in steps):
    return "gpt-2"
  if any(s.get("type") == "Split" and s.get("pattern", {}).get("Regex") == LLAMA3_SPLIT
         for s in steps):
    return "llama-bpe"
  return "default"


def _empty_array_writer(gguf):
  """GGUFWriter that writes an empty array (the byte vocabulary's merges: llama.cpp's gpt2
  vocabulary requires the key) where the package would drop or refuse it."""

  class Writer(gguf.GGUFWriter):
    def add_array(self, key, val, sub_type=None):
      if len(val) == 0:
        self.add_key_value(key, [], gguf.GGUFValueType.ARRAY, sub_type=sub_type)
      else:
        super().add_array(key, val)

    def _pack_val(self, val, vtype, add_vtype, sub_type=None):
      if vtype == gguf.GGUFValueType.ARRAY and len(val) == 0:
        prefix = self._pack("I", vtype) if add_vtype else b""
        return prefix + self._pack("I", sub_type) + self._pack("Q", 0)
      return super()._pack_val(val, vtype, add_vtype, sub_type=sub_type)

  return Writer


def export_gguf(workdir: str, out_file: str, step: int | None = None,
                ternary_type: str = "tq2_0") -> dict:
  """Write the b1.58 SubLN run in `workdir` (bitjax.load) as one GGUF file `out_file` for
  llama.cpp's bitnet architecture: hyperparameters, the run's tokenizer and the tensors
  (gguf_tensors). `out_file` must not exist; it appears complete or not at all. Returns
  {GGML type name: tensor count}."""
  from bitjax.train.config import ConfigError, model_config
  from bitjax.train.loading import load, saved_config

  gguf = _gguf()
  if ternary_type not in TERNARY_TYPES:
    raise InteropError(f"ternary_type={ternary_type!r} is not one of {list(TERNARY_TYPES)}")
  qtype = gguf.GGMLQuantizationType[ternary_type.upper()]
  where = os.path.join(os.fspath(workdir), "config.json")
  final = os.path.abspath(out_file)
  if os.path.exists(final):
    raise InteropError(f"{out_file}: exists; choose a new output file")
  if os.path.exists(where):  # the model section alone decides; refuse before restoring
    try:
      with open(where) as f:
        config = saved_config(json.load(f), where)
      cfg = model_config(config)
    except (ValueError, ConfigError) as e:
      raise InteropError(str(e).splitlines()[0]) from None
    if not isinstance(cfg, DecoderConfig):
      raise InteropError(f"{where}: config.task={config.task!r}; only decoders (task 'lm') "
                         "export")
    check_exportable(cfg, where)
  try:
    run = load(workdir, step=step)
  except ValueError as e:
    raise InteropError(str(e)) from None
  cfg = run.model.cfg
  vocabulary = _vocabulary(run.tokenizer, cfg.vocab_size,
                           os.path.join(os.fspath(workdir), "tokenizer"))
  tensors = gguf_tensors(run.model, qtype)
  os.makedirs(os.path.dirname(final), exist_ok=True)
  handle, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(final)}.",
                                       dir=os.path.dirname(final))
  os.close(handle)
  umask = os.umask(0)
  os.umask(umask)
  os.chmod(temporary, 0o666 & ~umask)  # mkstemp gives 0600; the output is a plain file
  try:
    writer = _empty_array_writer(gguf)(temporary, ARCHITECTURE)
    _write_metadata(writer, gguf, cfg, run, vocabulary, qtype)
    for name, data, tensor_type in tensors:
      writer.add_tensor(name, data, raw_dtype=tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    os.link(temporary, final)  # fails, rather than replaces, if out_file appeared meanwhile
  except FileExistsError:
    raise InteropError(f"{out_file}: exists; choose a new output file") from None
  finally:
    os.remove(temporary)
  counts = {}
  for _, _, tensor_type in tensors:
    counts[tensor_type.name] = counts.get(tensor_type.name, 0) + 1
  return counts


def _write_metadata(writer, gguf, cfg: DecoderConfig, run, vocabulary: dict, qtype) -> None:
  """general.*, the bitnet hyperparameters llama.cpp reads and tokenizer.ggml.*."""
  writer.add_name(os.path.basename(os.path.abspath(run.workdir)))
  writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype.name}"])
  writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
  writer.add_context_length(run.config.train.seq_len)
  writer.add_embedding_length(cfg.hidden_size)
  writer.add_block_count(cfg.num_layers)
  writer.add_feed_forward_length(cfg.mlp_hidden_size)
  writer.add_head_count(cfg.num_heads)
  writer.add_head_count_kv(cfg.kv_heads)
  writer.add_key_length(cfg.head_size)
  writer.add_value_length(cfg.head_size)
  writer.add_rope_dimension_count(cfg.head_size)
  writer.add_rope_freq_base(cfg.rope_theta)
  writer.add_layer_norm_rms_eps(cfg.norm_eps)
  writer.add_vocab_size(cfg.vocab_size)
  writer.add_string(f"{ARCHITECTURE}.hidden_activation", ACTIVATIONS[cfg.mlp_type])
  writer.add_tokenizer_model(vocabulary["model"])
  writer.add_tokenizer_pre(vocabulary["pre"])
  writer.add_token_list(vocabulary["tokens"])
  writer.add_token_types(vocabulary["types"])
  writer.add_array(gguf.Keys.Tokenizer.MERGES, vocabulary["merges"],
                   sub_type=gguf.GGUFValueType.STRING)
  writer.add_bos_token_id(vocabulary["bos"])
  writer.add_eos_token_id(vocabulary["eos"])
  writer.add_pad_token_id(vocabulary["pad"])
  # bitjax's pipelines put no BOS before a document and no EOS after a prompt.
  writer.add_add_bos_token(False)
  writer.add_add_eos_token(False)
