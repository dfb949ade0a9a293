"""bitjax.interop against transformers itself: tiny random BitNet (packed with both
linear classes, latent online, unquantized) and LLaMA checkpoints made by transformers,
imported logits against transformers' own, a run written from them that loads, generates
and trains on, the round trip through export_hf, and one-line errors that leave nothing.

Both sides compute in float32. Activations are quantized to int8 by rounding, which is
discontinuous: a last-bit difference upstream (torch and XLA sum in different orders)
can move one code at an exact rounding tie and shift later logits by about 1%. The fixed
inputs below hit no such tie; a failure after a change of either library may be one.
"""

import json
import os
import shutil
import subprocess
import sys

os.environ.setdefault("TORCHDYNAMO_DISABLE", "1")  # transformers' BitNet kernels torch.compile

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # transformers needs it to load quantized checkpoints
from transformers.integrations.bitnet import pack_weights  # noqa: E402

import bitjax  # noqa: E402
from bitjax.data import tokenizers  # noqa: E402
from bitjax.interop import InteropError, export_hf, import_hf, load_hf  # noqa: E402
from bitjax.train import train_and_evaluate  # noqa: E402
from bitjax.train.config import load_config  # noqa: E402
from conftest import write_python_corpus  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = dict(vocab_size=304, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             bos_token_id=1, eos_token_id=2, pad_token_id=0)
TOKENS = np.random.RandomState(0).randint(0, 280, (2, 8))  # ids of the tokenizer below


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """A small text_dir corpus and a 300-id BPE tokenizer trained on it."""
  root = tmp_path_factory.mktemp("interop")
  write_python_corpus(root, 6)
  tokenizers.train_tokenizer([p.read_text() for p in (root / "corpus").iterdir()], "bpe", 300,
                             str(root / "bpe"))
  return root


def randomize(model, seed):
  """Weights large enough that every ternary code and norm scale matters."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, param in model.named_parameters():
      param.copy_(1 + 0.3 * torch.randn_like(param) if "norm" in name
                  else 0.1 * torch.randn_like(param))


def write_bitnet(folder, fmt, tie, corpus, seed=0):
  """A BitNet checkpoint in `fmt`: packed-bitlinear / packed-autobitlinear (transformers'
  pack_weights), online (latent weights, sharded) or none (no quantization_config)."""
  config = transformers.BitNetConfig(**SHAPE, tie_word_embeddings=tie)
  model = transformers.BitNetForCausalLM(config).float()
  randomize(model, seed)
  model.save_pretrained(folder, max_shard_size="40KB" if fmt == "online" else "50MB")
  if fmt.startswith("packed"):
    linear_class = fmt.split("-")[1]
    tensors = {}
    for name, value in model.state_dict().items():
      if name == "lm_head.weight" and tie:
        continue
      if name.startswith("model.layers") and name.endswith("proj.weight"):
        scale = value.abs().mean().clamp(min=1e-5)
        tensors[name] = pack_weights((value / scale).round().clamp(-1, 1))
        stored = scale if linear_class == "autobitlinear" else 1 / scale
        tensors[name[:-len("weight")] + "weight_scale"] = stored.reshape(1)
      else:
        tensors[name] = value.detach().clone()
    for stale in os.listdir(folder):
      if stale.endswith(".safetensors"):
        os.remove(os.path.join(folder, stale))
    from safetensors.torch import save_file
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  if fmt != "none":
    mode = "online" if fmt == "online" else "offline"
    linear_class = "autobitlinear" if fmt == "online" else fmt.split("-")[1]
    edit_config(folder, quantization_config={"quant_method": "bitnet", "quantization_mode": mode,
                                             "linear_class": linear_class})
  shutil.copy(corpus / "bpe" / "tokenizer.json", folder)
  return folder


def write_llama(folder, corpus):
  config = transformers.LlamaConfig(**SHAPE, tie_word_embeddings=False, rms_norm_eps=1e-5)
  model = transformers.LlamaForCausalLM(config).float()
  randomize(model, 1)
  model.save_pretrained(folder)
  shutil.copy(corpus / "bpe" / "tokenizer.json", folder)
  return folder


def edit_config(folder, **fields):
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    config = json.load(f)
  config.update(fields)
  with open(path, "w") as f:
    json.dump(config, f)


def hf_logits(folder, tokens=TOKENS, architecture="BitNetForCausalLM"):
  model, info = getattr(transformers, architecture).from_pretrained(
      folder, dtype=torch.float32, output_loading_info=True)
  assert not info["missing_keys"] and not info["unexpected_keys"], info
  with torch.no_grad():
    return model(torch.tensor(tokens)).logits.numpy()


def assert_close(got, want):
  """Within 1e-4 of the logits' scale; the largest difference is printed for the note."""
  scale = np.abs(want).max()
  diff = np.abs(np.asarray(got) - want).max()
  print(f"largest logit difference {diff:.3g} (logits' scale {scale:.3g}, {diff / scale:.2g})")
  assert diff <= 1e-4 * scale, (diff, scale)


CASES = {  # format, tied embeddings
    "packed-bitlinear": ("packed-bitlinear", True),
    "packed-autobitlinear-untied": ("packed-autobitlinear", False),
    "online-latent-sharded": ("online", True),
    "unquantized": ("none", False),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_imported_bitnet_logits_match_transformers(case, corpus, tmp_path):
  fmt, tie = CASES[case]
  folder = write_bitnet(str(tmp_path / case), fmt, tie, corpus)
  model, cfg = load_hf(folder, compute_dtype="float32")
  assert cfg.norm_layout == "subln" and cfg.norm_eps == 1e-5 and cfg.num_kv_heads == 2
  assert cfg.tie_embeddings == tie and cfg.mlp_type == "relu2_glu"
  assert cfg.precision == ("fp32" if fmt == "none" else "b1.58")
  if fmt == "online":
    assert os.path.exists(os.path.join(folder, "model.safetensors.index.json"))
  assert_close(model(jnp.asarray(TOKENS)), hf_logits(folder))


def test_imported_llama_logits_match_transformers(corpus, tmp_path):
  folder = write_llama(str(tmp_path / "llama"), corpus)
  model, cfg = load_hf(folder, compute_dtype="float32")
  assert cfg.norm_layout == "per_projection" and cfg.mlp_type == "swiglu"
  assert_close(model(jnp.asarray(TOKENS)), hf_logits(folder, architecture="LlamaForCausalLM"))


def test_imported_run_loads_generates_trains_on_and_round_trips(corpus, tmp_path):
  folder = write_bitnet(str(tmp_path / "hf"), "packed-autobitlinear", True, corpus)
  base = load_config(f"{ROOT}/configs/lm.py:nano", {
      "data.name": "text_dir", "data.text_dir": str(corpus / "corpus"), "data.text_glob": "*.py",
      "data.data_dir": str(corpus / "tfds"), "train.seq_len": 16, "train.batch_size": 2,
      "train.steps": 2, "train.eval_every": 2, "train.eval_batches": 1,
      "train.progress_bar": False, "model.compute_dtype": "float32"})
  workdir = import_hf(folder, str(tmp_path / "run"), base)
  run = bitjax.load(workdir)
  source = tokenizers.load_tokenizer(str(corpus / "bpe"))
  assert run.step == 0 and run.tokenizer.kind == "bpe"
  assert run.tokenizer.vocab_size == source.vocab_size and run.tokenizer.eos_id == source.eos_id
  assert run.config.model.norm_layout == "subln" and run.config.data.tokenizer == "bpe"
  assert_close(run.model(jnp.asarray(TOKENS)), hf_logits(folder))
  assert isinstance(run.generate("def f1", max_new_tokens=3), str)

  exported = export_hf(workdir, str(tmp_path / "exported"))
  assert sorted(os.listdir(exported)) == ["config.json", "model.safetensors", "tokenizer.json",
                                         "tokenizer_config.json"]
  assert_close(run.model(jnp.asarray(TOKENS)), hf_logits(exported))
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
  assert hf_tokenizer.encode("def f1(x):") == run.tokenizer.encode("def f1(x):").tolist()

  # train continues from step 0 with the imported config
  from configs.imported import get_config  # noqa: E402 (the repository root is on sys.path)
  summary = train_and_evaluate(get_config(workdir), workdir)
  assert summary["steps_this_session"] == 2 and np.isfinite(summary["eval_loss"])
  assert bitjax.load(workdir).step == 2


def test_round_trip_with_bitlinear_and_untied_head(corpus, tmp_path):
  """A model trained in bitjax (random init, subln, GQA, untied) -> export_hf (bitlinear)
  -> transformers computes bitjax's logits."""
  config = load_config(f"{ROOT}/configs/lm.py:nano,precision=b1.58", {
      "data.name": "text_dir", "data.text_dir": str(corpus / "corpus"), "data.text_glob": "*.py",
      "data.data_dir": str(corpus / "tfds"), "data.tokenizer": "bpe",
      "data.tokenizer_path": str(corpus / "bpe"), "train.seq_len": 16, "train.batch_size": 2,
      "train.steps": 2, "train.eval_every": 2, "train.eval_batches": 1,
      "train.progress_bar": False, "model.compute_dtype": "float32",
      "model.norm_layout": "subln", "model.num_kv_heads": 2, "model.tie_embeddings": False})
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  run = bitjax.load(workdir)
  exported = export_hf(workdir, str(tmp_path / "hf"), linear_class="bitlinear")
  assert_close(run.model(jnp.asarray(TOKENS)), hf_logits(exported))


def test_per_projection_b158_is_refused_for_export(corpus, tmp_path):
  config = load_config(f"{ROOT}/configs/lm.py:nano,precision=b1.58", {
      "data.name": "text_dir", "data.text_dir": str(corpus / "corpus"), "data.text_glob": "*.py",
      "data.data_dir": str(corpus / "tfds"), "train.seq_len": 16, "train.batch_size": 2,
      "train.steps": 1, "train.eval_every": 1, "train.eval_batches": 1,
      "train.progress_bar": False})
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)
  with pytest.raises(InteropError, match="norm_layout='per_projection'.*subln"):
    export_hf(workdir, str(tmp_path / "hf"))
  assert not os.path.exists(tmp_path / "hf")


def truncate(folder):
  path = os.path.join(folder, "model.safetensors")
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) - 100)
  return path


ERRORS = {  # how a good packed folder is spoilt -> (the file named, the problem)
    "no config.json": (lambda d: os.remove(os.path.join(d, "config.json")) or
                       os.path.join(d, "config.json"), "no config.json"),
    "architecture": (lambda d: edit_config(d, architectures=["GPT2LMHeadModel"]) or
                     os.path.join(d, "config.json"), "GPT2LMHeadModel.*not supported"),
    "quantization mode": (lambda d: edit_config(d, quantization_config={
        "quant_method": "bitnet", "quantization_mode": "dynamic"}) or
        os.path.join(d, "config.json"), "quantization_mode='dynamic'"),
    "attention bias": (lambda d: edit_config(d, attention_bias=True) or
                       os.path.join(d, "config.json"), "attention_bias"),
    "rope scaling": (lambda d: edit_config(d, rope_parameters={
        "rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}) or
        os.path.join(d, "config.json"), "rope_type='linear'"),
    "shape mismatch": (lambda d: edit_config(d, intermediate_size=96) or
                       os.path.join(d, "model.safetensors"), "gate_proj.*shape"),
    "truncated file": (truncate, "truncated"),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_is_one_line_naming_the_file_and_writes_nothing(case, corpus, tmp_path):
  folder = write_bitnet(str(tmp_path / "hf"), "packed-autobitlinear", True, corpus)
  spoil, problem = ERRORS[case]
  named = spoil(folder)
  workdir = tmp_path / "run"
  with pytest.raises(InteropError, match=problem) as error:
    import_hf(folder, str(workdir))
  message = str(error.value)
  assert "\n" not in message and message.startswith(named), message
  assert not workdir.exists() and os.listdir(tmp_path) == ["hf"]


def test_cli_import_error_is_one_line(corpus, tmp_path):
  folder = write_bitnet(str(tmp_path / "hf"), "online", True, corpus)
  os.remove(os.path.join(folder, "config.json"))
  result = subprocess.run(
      [sys.executable, "-m", "bitjax", "import_hf", "--hf_dir", folder, "--workdir",
       str(tmp_path / "run")], capture_output=True, text=True, cwd=ROOT,
      env={**os.environ, "PYTHONPATH": ROOT})
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1] == (
      f"bitjax import_hf: {folder}/config.json: no config.json in the model folder")
  assert not (tmp_path / "run").exists()
