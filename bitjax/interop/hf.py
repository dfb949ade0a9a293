"""Hugging Face checkpoints <-> bitjax decoders: BitNet (packed offline, latent online,
unquantized) and plain LLaMA.

Names map one to one once the decoder uses the released models' norm layout
(`norm_layout="subln"`): input_layernorm -> attn_norm, post_attention_layernorm ->
mlp_norm, attn_sub_norm -> the norm inside o_proj, ffn_sub_norm -> the norm inside
down_proj. Hugging Face stores linear weights as [out, in], bitjax kernels as [in, out].

Packed weights (transformers' integrations/bitnet.py): ternary codes t + 1 in two bits,
four output rows to a uint8, byte row r bits 2i holding output row i * R + r (R = out/4);
`weight_scale` is divided by (`linear_class="bitlinear"`) or multiplied by
(`"autobitlinear"`). bitjax trains latent weights and quantizes them with absmean at
every forward pass, so an imported ternary matrix (codes c, scale s) becomes the latent
weight c * s / f (f: the fraction of nonzero codes): its absmean scale is s and its codes
are c, so the model computes what the checkpoint does and fine-tuning starts there.
"""

from __future__ import annotations

import copy
import dataclasses
import glob
import json
import os
import re
import shutil
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from bitjax.interop import safetensors
from bitjax.interop.errors import InteropError
from bitjax.models.decoder import Decoder, DecoderConfig

CONFIG_FILE = "config.json"
INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"
ARCHITECTURES = {"BitNetForCausalLM": "bitnet", "LlamaForCausalLM": "llama"}
# hidden_act -> bitjax mlp_type (both architectures use a gated MLP: act(gate) * up)
ACTIVATIONS = {"relu2": "relu2_glu", "silu": "swiglu"}
LINEAR_CLASSES = ("bitlinear", "autobitlinear")
QUANTIZATION_MODES = ("offline", "online")
# Computed from the config, never loaded; older checkpoints still carry them.
IGNORED_TENSORS = re.compile(r".*rotary_emb\.inv_freq$")
PRECISION_OF_DTYPE = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


@dataclasses.dataclass(frozen=True)
class Quantization:
  """How a BitNet checkpoint stores its linear weights: `mode` "offline" (ternary codes
  and a scale per matrix, packed or not) or "online" (latent weights, quantized at every
  forward pass), and whether `weight_scale` multiplies ("autobitlinear") or divides."""

  mode: str
  linear_class: str

  @property
  def scale_multiplies(self) -> bool:
    return self.linear_class == "autobitlinear"


@dataclasses.dataclass(frozen=True)
class HFCheckpoint:
  """A Hugging Face model folder: its config (as read) and where each tensor lives."""

  directory: str
  config: dict
  tensor_files: dict[str, str]  # tensor name -> the .safetensors file holding it

  @property
  def config_path(self) -> str:
    return os.path.join(self.directory, CONFIG_FILE)


def open_checkpoint(hf_dir: str) -> HFCheckpoint:
  """The config.json and the safetensors files (one, several, or sharded with an index) of
  a model folder; refuses pickled weights, which bitjax never loads."""
  hf_dir = os.fspath(hf_dir)
  config_path = os.path.join(hf_dir, CONFIG_FILE)
  if not os.path.isdir(hf_dir):
    raise InteropError(f"{hf_dir}: not a directory")
  if not os.path.exists(config_path):
    raise InteropError(f"{config_path}: no config.json in the model folder")
  try:
    with open(config_path) as f:
      config = json.load(f)
  except ValueError as e:
    raise InteropError(f"{config_path}: not valid JSON ({e})") from None
  index_path = os.path.join(hf_dir, INDEX_FILE)
  if os.path.exists(index_path):
    with open(index_path) as f:
      weight_map = json.load(f).get("weight_map", {})
    paths = sorted({os.path.join(hf_dir, name) for name in weight_map.values()})
    for path in paths:
      if not os.path.exists(path):
        raise InteropError(f"{index_path}: names {os.path.basename(path)}, which is missing")
  else:
    paths = sorted(glob.glob(os.path.join(hf_dir, "*.safetensors")))
  if not paths:
    pickled = [n for n in os.listdir(hf_dir) if n.endswith((".bin", ".pt", ".pth"))]
    problem = (f"only pickled weights ({pickled[0]}), which bitjax does not load (they can "
               "run code); convert them to safetensors" if pickled else "no *.safetensors file")
    raise InteropError(f"{hf_dir}: {problem}")
  tensor_files = {}
  for path in paths:
    header, _ = safetensors.read_header(path)
    for name in header:
      tensor_files[name] = path
  return HFCheckpoint(hf_dir, config, tensor_files)


def _rope_theta(config: dict, where: str) -> float:
  """RoPE theta from `rope_parameters` (transformers 5) or `rope_theta`; any scaling is
  refused, bitjax's RoPE has none."""
  params = config.get("rope_parameters") or {}
  scaling = config.get("rope_scaling") or {}
  kind = params.get("rope_type", "default") if params else scaling.get("rope_type",
                                                                       scaling.get("type"))
  if scaling and kind not in (None, "default"):
    raise InteropError(f"{where}: rope_scaling {scaling} is not supported (bitjax's RoPE "
                       "has no scaling)")
  if kind not in (None, "default"):
    raise InteropError(f"{where}: rope_parameters.rope_type={kind!r} is not supported "
                       "(only 'default' RoPE)")
  return float(params.get("rope_theta", config.get("rope_theta", 10000.0)))


def _quantization(config: dict, where: str) -> Quantization | None:
  quant = config.get("quantization_config")
  if quant is None:
    return None
  method = quant.get("quant_method")
  if method != "bitnet":
    raise InteropError(f"{where}: quantization_config.quant_method={method!r} is not "
                       "supported (only 'bitnet')")
  mode = quant.get("quantization_mode", "offline")
  linear_class = quant.get("linear_class", "bitlinear")
  if mode not in QUANTIZATION_MODES:
    raise InteropError(f"{where}: quantization_config.quantization_mode={mode!r} is not one "
                       f"of {list(QUANTIZATION_MODES)}")
  if linear_class not in LINEAR_CLASSES:
    raise InteropError(f"{where}: quantization_config.linear_class={linear_class!r} is not "
                       f"one of {list(LINEAR_CLASSES)}")
  if mode == "online" and linear_class != "autobitlinear":
    raise InteropError(f"{where}: quantization_mode='online' needs linear_class="
                       "'autobitlinear' (as in transformers)")
  if quant.get("use_rms_norm"):
    raise InteropError(f"{where}: quantization_config.use_rms_norm=true (a norm inside "
                       "every linear layer on top of SubLN) is not supported")
  not_converted = set(quant.get("modules_to_not_convert") or []) - {"lm_head"}
  if not_converted:
    raise InteropError(f"{where}: quantization_config.modules_to_not_convert="
                       f"{sorted(not_converted)}: bitjax quantizes every block projection")
  return Quantization(mode, linear_class)


def decoder_fields(config: dict, where: str) -> tuple[dict, str, Quantization | None]:
  """(DecoderConfig fields, architecture, quantization) of a Hugging Face config; fields
  bitjax cannot represent are refused by name."""
  architectures = config.get("architectures") or []
  known = [a for a in architectures if a in ARCHITECTURES]
  model_type = config.get("model_type")
  if not known:
    raise InteropError(f"{where}: architectures={architectures} (model_type={model_type!r}) "
                       f"is not supported; bitjax reads {sorted(ARCHITECTURES)}")
  architecture = ARCHITECTURES[known[0]]
  for name in ("attention_bias", "mlp_bias"):
    if config.get(name):
      raise InteropError(f"{where}: {name}=true is not supported (bitjax's projections "
                         "have no biases)")
  if config.get("pretraining_tp", 1) != 1:
    raise InteropError(f"{where}: pretraining_tp={config['pretraining_tp']} is not supported")
  activation = config.get("hidden_act", "relu2" if architecture == "bitnet" else "silu")
  if activation not in ACTIVATIONS:
    raise InteropError(f"{where}: hidden_act={activation!r} is not supported; bitjax has "
                       f"{sorted(ACTIVATIONS)}")
  quantization = _quantization(config, where)
  if quantization is not None and architecture != "bitnet":
    raise InteropError(f"{where}: a quantization_config on {known[0]} is not supported")
  hidden, heads = config["hidden_size"], config["num_attention_heads"]
  head_dim = config.get("head_dim") or hidden // heads
  if architecture == "bitnet" and head_dim * heads != hidden:
    raise InteropError(f"{where}: head_dim * num_attention_heads = {head_dim * heads} must "
                       f"equal hidden_size={hidden} (attn_sub_norm has hidden_size features)")
  dtype = str(config.get("dtype") or config.get("torch_dtype") or "float32")
  fields = dict(
      vocab_size=config["vocab_size"], hidden_size=hidden,
      num_layers=config["num_hidden_layers"], num_heads=heads,
      num_kv_heads=config.get("num_key_value_heads") or heads,
      head_dim=None if head_dim * heads == hidden else head_dim,
      mlp_hidden_size=config["intermediate_size"], mlp_type=ACTIVATIONS[activation],
      rope_theta=_rope_theta(config, where), norm="rms",
      norm_eps=float(config.get("rms_norm_eps", 1e-6)),
      norm_layout="subln" if architecture == "bitnet" else "per_projection",
      precision="b1.58" if quantization else PRECISION_OF_DTYPE.get(dtype, "fp32"),
      tie_embeddings=bool(config.get("tie_word_embeddings", False)),
  )
  return fields, architecture, quantization


def tensor_names(cfg: DecoderConfig, architecture: str) -> dict[str, tuple[str, ...]]:
  """Hugging Face tensor name -> the bitjax parameter path it fills (unscanned blocks)."""
  names = {"model.embed_tokens.weight": ("embed", "embedding"),
           "model.norm.weight": ("final_norm", "scale")}
  if not cfg.tie_embeddings:
    names["lm_head.weight"] = ("lm_head", "kernel")
  for i in range(cfg.num_layers):
    hf, bj = f"model.layers.{i}", ("layers", i)
    names[f"{hf}.input_layernorm.weight"] = (*bj, "attn_norm", "scale")
    names[f"{hf}.post_attention_layernorm.weight"] = (*bj, "mlp_norm", "scale")
    for proj in ("q_proj", "k_proj", "v_proj", "o_proj"):
      names[f"{hf}.self_attn.{proj}.weight"] = (*bj, "attn", proj, "kernel")
    for proj in ("gate_proj", "up_proj", "down_proj"):
      names[f"{hf}.mlp.{proj}.weight"] = (*bj, "mlp", proj, "kernel")
    if architecture == "bitnet":
      names[f"{hf}.self_attn.attn_sub_norm.weight"] = (*bj, "attn", "o_proj", "norm", "scale")
      names[f"{hf}.mlp.ffn_sub_norm.weight"] = (*bj, "mlp", "down_proj", "norm", "scale")
  return names


def unpack_codes(packed: np.ndarray, rows: int) -> np.ndarray:
  """Ternary codes [rows, in] (int8) from transformers' packing [ceil(rows/4), in]."""
  quarters = [((packed >> (2 * i)) & 3).astype(np.int8) - 1 for i in range(4)]
  return np.concatenate(quarters, axis=0)[:rows]


def pack_codes(codes: np.ndarray) -> np.ndarray:
  """transformers' packing of ternary codes [rows, in] (rows a multiple of 4)."""
  quarter = codes.shape[0] // 4
  stored = (codes + 1).astype(np.uint8)
  packed = np.zeros((quarter, codes.shape[1]), np.uint8)
  for i in range(4):
    packed |= stored[i * quarter:(i + 1) * quarter] << (2 * i)
  return packed


def latent_from_ternary(codes: np.ndarray, scale: float) -> np.ndarray:
  """A latent weight whose absmean quantization gives back exactly `codes` and `scale`:
  codes * scale / (fraction of nonzero codes)."""
  nonzero = np.count_nonzero(codes) / codes.size
  if nonzero == 0:
    return np.zeros(codes.shape, np.float32)
  return (codes.astype(np.float32) * np.float32(scale / nonzero)).astype(np.float32)


class _Reader:
  """Reads tensors from a checkpoint, each file's header once, and remembers which it read."""

  def __init__(self, checkpoint: HFCheckpoint):
    self.checkpoint, self.headers, self.used = checkpoint, {}, set()

  def has(self, name: str) -> bool:
    return name in self.checkpoint.tensor_files

  def path(self, name: str) -> str:
    return self.checkpoint.tensor_files[name]

  def get(self, name: str) -> np.ndarray:
    if not self.has(name):
      raise InteropError(f"{self.checkpoint.directory}: tensor {name!r} is missing from the "
                         "safetensors files")
    path = self.path(name)
    if path not in self.headers:
      self.headers[path] = safetensors.read_header(path)
    self.used.add(name)
    return safetensors.read_tensor(path, *self.headers[path], name)


def _linear_weight(reader: _Reader, name: str, shape: tuple[int, int],
                   quantization: Quantization | None) -> np.ndarray:
  """A bitjax kernel [in, out] from the Hugging Face weight `name` ([out, in], packed or
  not)."""
  fan_in, fan_out = shape
  weight = reader.get(name)
  if quantization is None or quantization.mode == "online":
    if weight.shape != (fan_out, fan_in):
      raise InteropError(f"{reader.path(name)}: tensor {name!r} has shape "
                         f"{list(weight.shape)}, config.json implies {[fan_out, fan_in]}")
    return weight.astype(np.float32).T
  if weight.dtype == np.uint8 and weight.shape == (-(-fan_out // 4), fan_in):
    codes = unpack_codes(weight, fan_out)
  elif weight.shape == (fan_out, fan_in) and quantization.linear_class == "autobitlinear":
    if not np.all(np.isin(weight, (-1, 0, 1))):
      raise InteropError(f"{reader.path(name)}: tensor {name!r} is neither packed nor "
                         "ternary, as quantization_mode='offline' requires")
    codes = weight.astype(np.int8)
  else:
    raise InteropError(f"{reader.path(name)}: tensor {name!r} has shape "
                       f"{list(weight.shape)} ({weight.dtype}), config.json implies packed "
                       f"uint8 {[-(-fan_out // 4), fan_in]}")
  scale_name = name[:-len("weight")] + "weight_scale"
  stored_scale = reader.get(scale_name).astype(np.float32)
  if stored_scale.size != 1:
    raise InteropError(f"{reader.path(scale_name)}: tensor {scale_name!r} has shape "
                       f"{list(stored_scale.shape)}; bitjax reads one scale per matrix")
  scale = float(stored_scale.reshape(()))
  scale = scale if quantization.scale_multiplies else 1.0 / scale
  return latent_from_ternary(codes, scale).T


def load_hf(hf_dir: str, **overrides) -> tuple[Decoder, DecoderConfig]:
  """The bitjax decoder of a Hugging Face model folder, and its config; `overrides` set
  DecoderConfig fields (e.g. compute_dtype="float32"). Raises InteropError (one line
  naming the file) for what bitjax cannot represent or read."""
  checkpoint = open_checkpoint(hf_dir)
  where = checkpoint.config_path
  try:
    fields, architecture, quantization = decoder_fields(checkpoint.config, where)
    cfg = DecoderConfig(**{**fields, **overrides, "scan_layers": False})
  except KeyError as e:
    raise InteropError(f"{where}: the field {e.args[0]} is missing") from None
  except (TypeError, ValueError) as e:
    if isinstance(e, InteropError):
      raise
    raise InteropError(f"{where}: {e}") from None
  reader = _Reader(checkpoint)
  if "tie_word_embeddings" not in checkpoint.config and not cfg.tie_embeddings \
      and not reader.has("lm_head.weight"):
    cfg = dataclasses.replace(cfg, tie_embeddings=True)  # older configs leave it implied
  abstract = nnx.eval_shape(lambda: Decoder(cfg, rngs=nnx.Rngs(0)))
  targets = dict(nnx.to_flat_state(nnx.state(abstract)))
  values = {}
  for name, path in tensor_names(cfg, architecture).items():
    shape = tuple(targets[path].shape)
    if path[-1] == "kernel":
      quantized = quantization if path[0] == "layers" else None
      values[path] = _linear_weight(reader, name, shape, quantized)
    else:
      value = reader.get(name).astype(np.float32)
      if value.shape != shape:
        raise InteropError(f"{reader.path(name)}: tensor {name!r} has shape "
                           f"{list(value.shape)}, config.json implies {list(shape)}")
      values[path] = value
  unexpected = sorted(n for n in checkpoint.tensor_files
                      if n not in reader.used and not IGNORED_TENSORS.match(n))
  if unexpected:
    raise InteropError(f"{checkpoint.tensor_files[unexpected[0]]}: unexpected tensor "
                       f"{unexpected[0]!r}" + (f" and {len(unexpected) - 1} more"
                                               if len(unexpected) > 1 else "")
                       + f" for {architecture} with config.json's fields")
  missing = sorted("/".join(map(str, p)) for p in targets if p not in values)
  if missing:
    raise InteropError(f"{where}: nothing in the checkpoint fills {missing[0]}")
  flat = [(path, var.replace(jnp.asarray(values[path], var.dtype)))
          for path, var in targets.items()]
  nnx.update(abstract, nnx.from_flat_state(flat))
  return abstract, cfg


def _fresh_directory(target: str, what: str) -> str:
  """A temporary directory beside `target` (renamed to it once complete, so nothing is
  left at `target` on an error); `target` must not exist or be an empty directory."""
  target = os.path.abspath(target)
  if os.path.exists(target) and (not os.path.isdir(target) or os.listdir(target)):
    raise InteropError(f"{target}: {what} exists and is not empty; choose a new one")
  os.makedirs(os.path.dirname(target), exist_ok=True)
  return tempfile.mkdtemp(prefix=f".{os.path.basename(target)}.", dir=os.path.dirname(target))


def _finish(temporary: str, target: str) -> None:
  target = os.path.abspath(target)
  if os.path.isdir(target):
    os.rmdir(target)  # empty, checked by _fresh_directory
  os.rename(temporary, target)


def run_config(cfg: DecoderConfig, tokenizer_path: str | None, max_positions: int | None,
               base=None):
  """The resolved config of an imported run: `base` (a bitjax config; default: the lm
  task's defaults) with the imported model section, the imported tokenizer (bpe at
  `tokenizer_path`, else bytes) and train.seq_len within the model's positions."""
  from bitjax.train.config import default_config, resolve_config

  config = default_config("lm") if base is None else copy.deepcopy(base)
  config.unlock()
  config.task = "lm"
  fields = dataclasses.asdict(cfg)
  config.model = ml_collections.ConfigDict({**config.model.to_dict(), **{
      name: fields[name] for name in config.model}})
  if tokenizer_path is not None:
    config.data.tokenizer, config.data.tokenizer_path = "bpe", tokenizer_path
  if max_positions:
    config.train.seq_len = min(config.train.seq_len, max_positions)
  return resolve_config(config)


def import_hf(hf_dir: str, workdir: str, config=None) -> str:
  """Write the Hugging Face model in `hf_dir` as a bitjax run in `workdir` (a new or
  empty directory): config.json (the lm task, the imported model section over `config`
  or the defaults), the tokenizer (tokenizer.json, when the folder has one) and a
  checkpoint at step 0 that bitjax.load, `generate` and `train` (which continues from
  it with the same config, e.g. `--config configs/imported.py:WORKDIR`) restore.
  Everything is written to a temporary directory first, so an error leaves nothing.
  Returns the workdir."""
  from bitjax.data.tokenizers import open_tokenizer
  from bitjax.parallel import make_mesh
  from bitjax.train.checkpoint import Checkpointer, check_run_format, guard_config
  from bitjax.train.config import ConfigError, model_config, run_record
  from bitjax.train.optim import make_optimizer
  from bitjax.train.step import TrainState, state_layout
  from bitjax.train.tasks import get_task
  from bitjax.train.trainer import TOKENIZER_DIR

  model, cfg = load_hf(hf_dir)
  has_tokenizer = os.path.exists(os.path.join(hf_dir, "tokenizer.json"))
  if has_tokenizer:
    try:
      tokenizer = open_tokenizer("bpe", hf_dir, "hf_dir")
    except ValueError as e:
      raise InteropError(f"{os.path.join(hf_dir, 'tokenizer.json')}: {e}") from None
    if tokenizer.vocab_size > cfg.vocab_size:
      raise InteropError(f"{os.path.join(hf_dir, 'tokenizer.json')}: {tokenizer.vocab_size} "
                         f"ids do not fit the model's vocab_size={cfg.vocab_size}")
  final = os.path.abspath(workdir)
  temporary = _fresh_directory(final, "the workdir")
  try:
    if has_tokenizer:
      tokenizer.save(os.path.join(temporary, TOKENIZER_DIR))
    tokenizer_path = os.path.join(final, TOKENIZER_DIR) if has_tokenizer else None
    # The tokenizer is read from the temporary copy until the rename.
    config = run_config(cfg, tokenizer_path and os.path.join(temporary, TOKENIZER_DIR),
                        open_checkpoint(hf_dir).config.get("max_position_embeddings"), config)
    task = get_task(config)
    data_state = task.train_iterator(0, 1).get_state()
    if has_tokenizer:
      config.data.tokenizer_path = tokenizer_path
    check_run_format(temporary, write=True)
    guard_config(temporary, run_record(config))
    mesh = make_mesh(devices=jax.local_devices()[:1])
    tx = make_optimizer(config.optim, config.train.steps)
    layout = state_layout(model_config(config), tx, config.train.seed, mesh, task.model_class)
    params = nnx.state(model)
    state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
    checkpointer = Checkpointer(os.path.join(temporary, "checkpoints"),
                                config.train.max_checkpoints)
    try:
      checkpointer.save(0, jax.device_put(state, layout.shardings), data_state)
    finally:
      checkpointer.close()
    _finish(temporary, final)
  except ConfigError as e:
    shutil.rmtree(temporary, ignore_errors=True)
    raise InteropError(f"{final}: bad config for the imported model: {e}") from None
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return final


def _exportable(cfg: DecoderConfig, where: str) -> str:
  """The Hugging Face architecture a decoder config exports to, or InteropError naming
  the field that has no equivalent there."""
  spec = cfg.spec
  if cfg.norm != "rms":
    raise InteropError(f"{where}: config.model.norm={cfg.norm!r}; Hugging Face models use "
                       "RMSNorm ('rms')")
  activation = {v: k for k, v in ACTIVATIONS.items()}.get(cfg.mlp_type)
  if activation is None:
    raise InteropError(f"{where}: config.model.mlp_type={cfg.mlp_type!r} has no Hugging "
                       f"Face equivalent (export takes {sorted(ACTIVATIONS.values())})")
  if spec.quantized:
    if (spec.weight, spec.act_bits, spec.act_granularity) != ("absmean", 8, "token"):
      raise InteropError(f"{where}: config.model.precision={cfg.precision!r} (weights "
                         f"{spec.weight}, activations {spec.act_bits} bits per "
                         f"{spec.act_granularity}); Hugging Face BitNet is b1.58: absmean "
                         "ternary weights, 8-bit activations per token")
    if cfg.norm_layout != "subln":
      raise InteropError(f"{where}: config.model.norm_layout={cfg.norm_layout!r}; Hugging "
                         "Face BitNet has the 'subln' layout (train with "
                         "--config.model.norm_layout=subln)")
  if cfg.norm_layout == "subln" and cfg.num_heads * cfg.head_size != cfg.hidden_size:
    raise InteropError(f"{where}: num_heads * head_dim must equal hidden_size for "
                       "Hugging Face BitNet's attn_sub_norm")
  return "bitnet" if cfg.norm_layout == "subln" else "llama"


def hf_config(cfg: DecoderConfig, architecture: str, max_positions: int, tokenizer,
              linear_class: str) -> dict:
  """config.json of the Hugging Face model a decoder config exports to."""
  bitnet = architecture == "bitnet"
  activation = {v: k for k, v in ACTIVATIONS.items()}[cfg.mlp_type]
  config = {
      "architectures": ["BitNetForCausalLM" if bitnet else "LlamaForCausalLM"],
      "model_type": architecture, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.hidden_size, "intermediate_size": cfg.mlp_hidden_size,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.kv_heads, "head_dim": cfg.head_size,
      "hidden_act": activation, "max_position_embeddings": max_positions,
      "rms_norm_eps": cfg.norm_eps, "tie_word_embeddings": cfg.tie_embeddings,
      "rope_theta": cfg.rope_theta,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
      "attention_bias": False, "dtype": "float32",
      "bos_token_id": getattr(tokenizer, "bos_id", None),
      "eos_token_id": getattr(tokenizer, "eos_id", None),
      "pad_token_id": getattr(tokenizer, "pad_id", None),
  }
  if not bitnet:
    config["mlp_bias"] = False
  if cfg.spec.quantized:
    config["quantization_config"] = {"quant_method": "bitnet", "linear_class": linear_class,
                                     "quantization_mode": "offline"}
  return config


def hf_tensors(model: Decoder, architecture: str, linear_class: str) -> dict[str, np.ndarray]:
  """The Hugging Face tensors of a decoder: float32, block projections packed (codes of
  the model's own absmean quantization, and weight_scale) when it is quantized."""
  from bitjax.models.transformer import convert_layers
  from bitjax.quant.quantizers import quantize_weight

  model = convert_layers(model, scan=False)
  cfg = model.cfg
  flat = {path: np.asarray(var[...], np.float32) if path[-1] != "kernel" else var
          for path, var in nnx.to_flat_state(nnx.state(model))}
  tensors = {}
  for name, path in tensor_names(cfg, architecture).items():
    value = flat[path]
    if path[-1] != "kernel":
      tensors[name] = value
      continue
    kernel = value[...]
    if path[0] != "layers" or not cfg.spec.quantized:
      tensors[name] = np.asarray(kernel, np.float32).T.copy()
      continue
    codes, scale = quantize_weight(kernel, cfg.spec.weight)
    codes, scale = np.asarray(codes, np.int8).T, np.float32(scale)
    if codes.shape[0] % 4:
      raise InteropError(f"{name}: {codes.shape[0]} output features; Hugging Face packs four "
                         "rows to a byte and needs a multiple of 4")
    tensors[name] = pack_codes(codes)
    stored = scale if linear_class == "autobitlinear" else np.float32(1.0) / scale
    tensors[name[:-len("weight")] + "weight_scale"] = np.asarray([stored], np.float32)
  return tensors


def export_hf(workdir: str, out_dir: str, step: int | None = None,
              linear_class: str = "autobitlinear") -> str:
  """Write the run in `workdir` (bitjax.load) as a Hugging Face model folder `out_dir`
  (new or empty): config.json, model.safetensors (BitNet's packed offline format for a
  b1.58 SubLN model, `linear_class` as the released models use; float32 otherwise;
  LLaMA for a full-precision per-projection model) and the tokenizer for a bpe run.
  Returns `out_dir`."""
  from bitjax.train.loading import load

  if linear_class not in LINEAR_CLASSES:
    raise InteropError(f"linear_class={linear_class!r} is not one of {list(LINEAR_CLASSES)}")
  where = os.path.join(os.fspath(workdir), "config.json")
  try:
    run = load(workdir, step=step)
  except ValueError as e:
    raise InteropError(str(e)) from None
  if not isinstance(run.model, Decoder):
    raise InteropError(f"{where}: config.task={run.config.task!r}; only decoders (task 'lm') "
                       "export")
  architecture = _exportable(run.model.cfg, where)
  tensors = hf_tensors(run.model, architecture, linear_class)
  final = os.path.abspath(out_dir)
  temporary = _fresh_directory(final, "the output folder")
  try:
    config = hf_config(run.model.cfg, architecture, run.config.train.seq_len, run.tokenizer,
                       linear_class)
    with open(os.path.join(temporary, CONFIG_FILE), "w") as f:
      json.dump(config, f, indent=2)
    safetensors.write(os.path.join(temporary, WEIGHTS_FILE), tensors, {"format": "pt"})
    if getattr(run.tokenizer, "kind", None) == "bpe":
      _write_hf_tokenizer(run.tokenizer, temporary)
    _finish(temporary, final)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise
  return final


def _write_hf_tokenizer(tokenizer, directory: str) -> None:
  """tokenizer.json as the run holds it, and a tokenizer_config.json naming its special
  tokens, so AutoTokenizer and bitjax both read the folder."""
  rust = tokenizer._tokenizer  # the Hugging Face `tokenizers` object it wraps
  with open(os.path.join(directory, "tokenizer.json"), "w") as f:
    f.write(rust.to_str())
  settings = {"tokenizer_class": "PreTrainedTokenizerFast",
              **{f"{role}_token": rust.id_to_token(getattr(tokenizer, f"{role}_id"))
                 for role in ("bos", "eos", "pad")}}
  with open(os.path.join(directory, "tokenizer_config.json"), "w") as f:
    json.dump(settings, f, indent=2)
