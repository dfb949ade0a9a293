"""export_gguf: a b1.58 SubLN run written for llama.cpp's bitnet architecture, read back
with the gguf package's reader: every tensor dequantizes to the model's forward-pass
weights (ternary codes times scale, exactly; the embedding to float16), names and shapes
are llama.cpp's, the metadata holds the hyperparameters and the tokenizer; refusals are
one line and an existing file is never touched."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

gguf = pytest.importorskip("gguf")

import bitjax  # noqa: E402
from bitjax.data import tokenizers  # noqa: E402
from bitjax.interop import InteropError  # noqa: E402
from bitjax.interop.gguf import export_gguf, gguf_tensors  # noqa: E402
from bitjax.models.decoder import Decoder, DecoderConfig  # noqa: E402
from bitjax.models.transformer import convert_layers  # noqa: E402
from bitjax.quant.quantizers import quantize_weight  # noqa: E402
from bitjax.train import train_and_evaluate  # noqa: E402
from bitjax.train.config import load_config  # noqa: E402
from conftest import write_python_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Input widths 256 and 512 fill TQ blocks (256 weights); GQA, squared-ReLU GLU.
MODEL = {"model.norm_layout": "subln", "model.hidden_size": 256, "model.mlp_hidden_size": 512,
         "model.num_heads": 4, "model.num_kv_heads": 2, "model.mlp_type": "relu2_glu",
         "model.compute_dtype": "float32"}
PROJECTIONS = {"attn_q": ("attn", "q_proj"), "attn_k": ("attn", "k_proj"),
               "attn_v": ("attn", "v_proj"), "attn_output": ("attn", "o_proj"),
               "ffn_gate": ("mlp", "gate_proj"), "ffn_up": ("mlp", "up_proj"),
               "ffn_down": ("mlp", "down_proj")}
NORMS = {"attn_norm": ("attn_norm",), "ffn_norm": ("mlp_norm",),
         "attn_sub_norm": ("attn", "o_proj", "norm"), "ffn_sub_norm": ("mlp", "down_proj", "norm")}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A 2-step b1.58 SubLN run with the byte tokenizer."""
  root = tmp_path_factory.mktemp("gguf")
  write_python_corpus(root, 4)
  config = load_config(f"{ROOT}/configs/lm.py:nano,precision=b1.58", {
      **MODEL, "data.name": "text_dir", "data.text_dir": str(root / "corpus"),
      "data.text_glob": "*.py", "data.data_dir": str(root / "tfds"), "train.seq_len": 32,
      "train.batch_size": 2, "train.steps": 2, "train.eval_every": 2, "train.eval_batches": 1,
      "train.progress_bar": False})
  workdir = str(root / "run")
  train_and_evaluate(config, workdir)
  return root, workdir


def read(path):
  reader = gguf.GGUFReader(path)
  fields = {name: field.contents() for name, field in reader.fields.items()}
  return fields, {t.name: t for t in reader.tensors}


def dequantized(tensor):
  """[out, in] float32 values of a tensor as llama.cpp reads them."""
  values = gguf.quants.dequantize(tensor.data, tensor.tensor_type)
  return np.asarray(values, np.float32).reshape(tuple(reversed(tensor.shape.tolist())))


def forward_weights(model):
  """llama.cpp name -> the weight the bitjax forward pass uses, [out, in]: codes * scale
  for the ternary projections (as codes and scale), the parameters as they are else."""
  model = convert_layers(model, scan=False)
  weights = {"token_embd.weight": model.embed.embedding[...],
             "output_norm.weight": model.final_norm.scale[...]}
  for i, layer in enumerate(model.layers):
    for name, path in PROJECTIONS.items():
      kernel = getattr(getattr(layer, path[0]), path[1]).kernel[...]
      codes, scale = quantize_weight(kernel, model.cfg.spec.weight)
      weights[f"blk.{i}.{name}"] = (np.asarray(codes, np.float32).T, np.float32(scale))
    for name, path in NORMS.items():
      module = layer
      for part in path:
        module = getattr(module, part)
      weights[f"blk.{i}.{name}.weight"] = module.scale[...]
  return {k: v if isinstance(v, tuple) else np.asarray(v, np.float32) for k, v in weights.items()}


def assert_tensors_are_the_forward_weights(tensors, model, ternary_type):
  want = forward_weights(model)
  ternary = {k for k, v in want.items() if isinstance(v, tuple)}
  assert set(tensors) == ({f"{k}.weight" for k in ternary} | {f"{k}.scale" for k in ternary}
                          | set(want) - ternary)
  for name, value in want.items():
    if name in ternary:
      codes, scale = value
      weight, stored_scale = tensors[f"{name}.weight"], tensors[f"{name}.scale"]
      assert weight.tensor_type == ternary_type, name
      assert stored_scale.tensor_type == gguf.GGMLQuantizationType.F32
      np.testing.assert_array_equal(dequantized(weight), codes, err_msg=name)
      np.testing.assert_array_equal(dequantized(weight) * dequantized(stored_scale),
                                    codes * scale, err_msg=name)
    elif name == "token_embd.weight":
      assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F16
      np.testing.assert_array_equal(dequantized(tensors[name]),
                                    value.astype(np.float16).astype(np.float32))
    else:
      assert tensors[name].tensor_type == gguf.GGMLQuantizationType.F32, name
      np.testing.assert_array_equal(dequantized(tensors[name]).reshape(value.shape), value)


@pytest.mark.parametrize("ternary_type", ["tq2_0", "tq1_0"])
def test_tensors_dequantize_to_the_forward_weights(run, ternary_type, tmp_path):
  _, workdir = run
  out = str(tmp_path / "model.gguf")
  counts = export_gguf(workdir, out, ternary_type=ternary_type)
  qtype = gguf.GGMLQuantizationType[ternary_type.upper()]
  assert counts == {"F16": 1, "F32": 1 + 2 * (4 + 7), qtype.name: 2 * 7}
  _, tensors = read(out)
  model = bitjax.load(workdir).model
  assert_tensors_are_the_forward_weights(tensors, model, qtype)
  # llama.cpp's shapes (GGUF lists the input width first): {n_embd, n_vocab}, {n_embd, n_ff}...
  assert tensors["token_embd.weight"].shape.tolist() == [256, 264]
  assert tensors["blk.1.attn_k.weight"].shape.tolist() == [256, 128]
  assert tensors["blk.1.ffn_down.weight"].shape.tolist() == [512, 256]
  assert tensors["blk.1.ffn_sub_norm.weight"].shape.tolist() == [512]
  assert os.listdir(tmp_path) == ["model.gguf"]


def test_metadata_holds_the_hyperparameters_and_the_byte_vocabulary(run, tmp_path):
  _, workdir = run
  out = str(tmp_path / "model.gguf")
  done = subprocess.run([sys.executable, "-m", "bitjax", "export_gguf", f"--workdir={workdir}",
                         f"--out={out}"], capture_output=True, text=True, cwd=ROOT,
                        env={**os.environ, "PYTHONPATH": ROOT})
  assert done.returncode == 0, done.stderr
  assert done.stdout == f"exported {workdir} to {out} (1 F16, 23 F32, 14 TQ2_0 tensors)\n"
  fields, _ = read(out)
  cfg = bitjax.load(workdir).model.cfg
  assert {k: v for k, v in fields.items() if k.startswith(("general.", "bitnet."))} == {
      "general.architecture": "bitnet", "general.name": "run",
      "general.file_type": int(gguf.LlamaFileType.MOSTLY_TQ2_0),
      "general.quantization_version": gguf.GGML_QUANT_VERSION,
      "bitnet.context_length": 32, "bitnet.embedding_length": 256, "bitnet.block_count": 2,
      "bitnet.feed_forward_length": 512, "bitnet.attention.head_count": 4,
      "bitnet.attention.head_count_kv": 2, "bitnet.attention.key_length": 64,
      "bitnet.attention.value_length": 64, "bitnet.rope.dimension_count": 64,
      "bitnet.rope.freq_base": pytest.approx(cfg.rope_theta),
      "bitnet.attention.layer_norm_rms_epsilon": pytest.approx(cfg.norm_eps),
      "bitnet.vocab_size": 264, "bitnet.hidden_activation": "relu2"}
  # Byte b is id b + 3, spelled as GPT-2's byte-level character; no merges: a token a byte.
  tokens = fields["tokenizer.ggml.tokens"]
  assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.merges"] == []
  assert tokens[:3] == ["<pad>", "<bos>", "<eos>"] and tokens[3 + ord("a")] == "a"
  assert tokens[3 + ord(" ")] == "Ġ" and tokens[259:] == [f"[PAD{i}]" for i in range(259, 264)]
  types = gguf.TokenType
  assert fields["tokenizer.ggml.token_type"] == [types.CONTROL] * 3 + [types.NORMAL] * 256 + \
      [types.UNUSED] * 5
  assert (fields["tokenizer.ggml.padding_token_id"], fields["tokenizer.ggml.bos_token_id"],
          fields["tokenizer.ggml.eos_token_id"]) == (0, 1, 2)
  assert fields["tokenizer.ggml.add_bos_token"] is False


def test_a_bpe_tokenizer_is_written_as_it_is(run, tmp_path):
  root, workdir = run
  bpe_run = str(tmp_path / "bpe_run")
  shutil.copytree(workdir, bpe_run)
  corpus = [p.read_text() for p in (root / "corpus").iterdir()]
  tokenizer = tokenizers.train_tokenizer(corpus, "bpe", 262, str(tmp_path / "bpe"))
  shutil.rmtree(os.path.join(bpe_run, "tokenizer"))
  tokenizer.save(os.path.join(bpe_run, "tokenizer"))
  out = str(tmp_path / "model.gguf")
  export_gguf(bpe_run, out)
  fields, _ = read(out)
  spec = json.loads(tokenizer._tokenizer.to_str())
  vocab = tokenizer._tokenizer.get_vocab(with_added_tokens=True)
  assert fields["tokenizer.ggml.pre"] == "gpt-2"
  assert fields["tokenizer.ggml.tokens"][:tokenizer.vocab_size] == sorted(vocab, key=vocab.get)
  assert fields["tokenizer.ggml.merges"] == [
      m if isinstance(m, str) else " ".join(m) for m in spec["model"]["merges"]]
  assert fields["tokenizer.ggml.eos_token_id"] == tokenizer.eos_id
  assert fields["tokenizer.ggml.token_type"][tokenizer.eos_id] == gguf.TokenType.CONTROL


def test_rows_that_do_not_fill_tq_blocks_are_f16_codes():
  cfg = DecoderConfig(vocab_size=64, hidden_size=64, num_layers=1, num_heads=2,
                      mlp_hidden_size=128, precision="b1.58", norm_layout="subln")
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  tensors = {name: (data, qtype) for name, data, qtype in
             gguf_tensors(model, gguf.GGMLQuantizationType.TQ2_0)}
  data, qtype = tensors["blk.0.ffn_up.weight"]
  assert qtype == gguf.GGMLQuantizationType.F16 and set(np.unique(data)) <= {-1, 0, 1}
  codes, _ = quantize_weight(model.layers[0].mlp.up_proj.kernel[...], cfg.spec.weight)
  np.testing.assert_array_equal(data, np.asarray(codes).T)


def edited_run(workdir, tmp_path, **model_fields):
  """A copy of the run whose config.json sets `model_fields`."""
  copy = str(tmp_path / "edited")
  shutil.copytree(workdir, copy)
  path = os.path.join(copy, "config.json")
  with open(path) as f:
    record = json.load(f)
  record["model"].update(model_fields)
  with open(path, "w") as f:
    json.dump(record, f)
  return copy


@pytest.mark.parametrize("fields, message", [
    ({"precision": "bf16"}, r"config.json: config.model.precision='bf16'; GGUF export writes "
                            "ternary"),
    ({"norm_layout": "per_projection"}, r"config.json: config.model.norm_layout="
                                        "'per_projection'; llama.cpp's bitnet .*subln"),
    ({"tie_embeddings": False}, r"config.json: config.model.tie_embeddings=False"),
])
def test_refusals_are_one_line_and_write_nothing(run, tmp_path, fields, message):
  _, workdir = run
  out = tmp_path / "out" / "model.gguf"
  out.parent.mkdir()
  with pytest.raises(InteropError, match=message) as error:
    export_gguf(edited_run(workdir, tmp_path, **fields), str(out))
  assert "\n" not in str(error.value)
  assert os.listdir(out.parent) == []


def test_an_existing_file_is_never_overwritten(run, tmp_path):
  _, workdir = run
  out = tmp_path / "model.gguf"
  out.write_text("keep me")
  with pytest.raises(InteropError, match="model.gguf: exists; choose a new output file"):
    export_gguf(workdir, str(out))
  assert out.read_text() == "keep me" and os.listdir(tmp_path) == ["model.gguf"]
  with pytest.raises(InteropError, match="step=7 is not a checkpoint"):
    export_gguf(workdir, str(tmp_path / "new.gguf"), step=7)
  assert os.listdir(tmp_path) == ["model.gguf"]
