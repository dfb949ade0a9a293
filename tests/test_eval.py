"""bitjax.eval: the lm-evaluation-harness adapter on the repository's offline tasks agrees
with log-likelihoods and greedy generations computed directly from the model, and
`python -m bitjax eval` refuses an unknown task in one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

# Nothing may reach the network: the local tasks read committed files only.
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

pytest.importorskip("lm_eval")

from flax import nnx  # noqa: E402
from lm_eval.api.instance import Instance  # noqa: E402

from bitjax.data.tokenizers import ByteTokenizer  # noqa: E402
from bitjax.eval import BitjaxLM, evaluate, write_results  # noqa: E402
from bitjax.eval.tasks import load_jsonl  # noqa: E402
from bitjax.infer import generate  # noqa: E402
from bitjax.models import Decoder, DecoderConfig  # noqa: E402

# Short enough that the longest multiple-choice prompts lose their first bytes.
MAX_LENGTH = 64
TOKENIZER = ByteTokenizer()


@pytest.fixture(scope="module")
def model():
  """A random decoder of the `nano` size (configs/lm.py) in float32. The adapter does not
  depend on the precision; a b1.58 model's 8-bit activation codes may round the other way
  when XLA sums in another order for another shape, which moves a score by a quantization
  step, not by float rounding, so the comparisons here use a float model."""
  config = DecoderConfig(vocab_size=264, hidden_size=64, num_layers=2, num_heads=2,
                         mlp_hidden_size=192, precision="fp32")
  return Decoder(config, rngs=nnx.Rngs(0))


@nnx.jit
def forward(model, tokens):
  return model(tokens)


def log_softmax(model, tokens: np.ndarray) -> np.ndarray:
  """float64 log-probabilities after each of `tokens`' prefixes, from one plain forward pass
  (right-padded to MAX_LENGTH for one compile: causal attention never sees the padding)."""
  padded = np.zeros((1, MAX_LENGTH), np.int32)
  padded[0, :len(tokens)] = tokens
  logits = np.asarray(forward(model, padded), np.float64)[0, :len(tokens)]
  return logits - np.logaddexp.reduce(logits, axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def harness_results(model):
  lm = BitjaxLM(model, TOKENIZER, max_length=MAX_LENGTH, batch_size=4)
  return evaluate(lm, ["bitjax_local"], log_samples=True, bootstrap_iters=0)


def direct_log_probs(model, context: str, continuation: str) -> tuple[float, bool]:
  """log p(continuation | EOS + context), and whether each token is the argmax."""
  tokens = np.concatenate([[TOKENIZER.eos_id], TOKENIZER.encode(context + continuation)])
  tokens = tokens[-(MAX_LENGTH + 1):]
  log_probs = log_softmax(model, tokens[:-1])
  scored = len(TOKENIZER.encode(continuation))
  positions = np.arange(len(tokens) - 1 - scored, len(tokens) - 1)
  targets = tokens[positions + 1]
  return (float(log_probs[positions, targets].sum()),
          bool(np.all(log_probs[positions].argmax(-1) == targets)))


def test_multiple_choice_matches_the_model(model, harness_results):
  docs = load_jsonl("choice.jsonl")["test"]
  samples = sorted(harness_results["samples"]["bitjax_choice"], key=lambda s: s["doc_id"])
  assert len(samples) == len(docs) == 32
  correct, correct_norm = [], []
  for doc, sample in zip(docs, samples):
    context = f"Question: {doc['question']}\nAnswer:"
    expected = [direct_log_probs(model, context, " " + choice) for choice in doc["choices"]]
    reported = [resp[0] for resp in sample["resps"]]
    np.testing.assert_allclose([r[0] for r in reported], [e[0] for e in expected], rtol=1e-5)
    assert [bool(r[1]) for r in reported] == [e[1] for e in expected]
    log_likelihoods = np.array([e[0] for e in expected])
    lengths = np.array([len(choice) for choice in doc["choices"]], np.float64)
    correct.append(log_likelihoods.argmax() == doc["answer"])
    correct_norm.append((log_likelihoods / lengths).argmax() == doc["answer"])
  metrics = harness_results["results"]["bitjax_choice"]
  assert metrics["acc,none"] == pytest.approx(np.mean(correct))
  assert metrics["acc_norm,none"] == pytest.approx(np.mean(correct_norm))


def test_generation_matches_greedy_generate(model, harness_results):
  docs = load_jsonl("complete.jsonl")["test"]
  samples = sorted(harness_results["samples"]["bitjax_complete"], key=lambda s: s["doc_id"])
  assert len(samples) == len(docs) == 24
  prompts = [np.concatenate([[TOKENIZER.eos_id], TOKENIZER.encode(f"Q: {doc['prompt']}\nA:")])
             for doc in docs]
  rows = generate(model, prompts, 12, eos_id=TOKENIZER.eos_id)
  expected = [TOKENIZER.decode(row[len(prompt):]).split("\n")[0]
              for prompt, row in zip(prompts, rows)]
  assert [sample["resps"][0][0] for sample in samples] == expected
  exact = np.mean([text.strip() == doc["answer"] for text, doc in zip(expected, docs)])
  assert harness_results["results"]["bitjax_complete"]["exact_match,strip"] == exact


def test_rolling_loglikelihood_covers_every_token_once(model):
  """Three windows of MAX_LENGTH tokens for a 150-byte text: each token is predicted once,
  from the tokens of its window before it; the last window keeps a full context."""
  text = "".join(f"{i} bottles of milk on the wall; " for i in range(99, 94, -1))[:150]
  lm = BitjaxLM(model, TOKENIZER, max_length=MAX_LENGTH, batch_size=2)
  (reported,) = lm.loglikelihood_rolling(
      [Instance("loglikelihood_rolling", doc={}, arguments=(text,), idx=0)])
  tokens = np.concatenate([[TOKENIZER.eos_id], TOKENIZER.encode(text)])
  expected = 0.0
  for start in range(0, len(tokens) - 1, MAX_LENGTH):
    end = min(start + MAX_LENGTH, len(tokens) - 1)  # predicts tokens[start + 1 : end + 1]
    window = tokens[max(0, end - MAX_LENGTH):end + 1]
    log_probs = log_softmax(model, window[:-1])
    positions = np.arange(len(window) - 1 - (end - start), len(window) - 1)
    expected += log_probs[positions, window[positions + 1]].sum()
  assert reported == pytest.approx(expected, rel=1e-5)


def test_results_files_are_never_overwritten(tmp_path):
  first = write_results({"results": {"a": 1}}, str(tmp_path))
  second = write_results({"results": {"a": 2}}, str(tmp_path))
  assert first != second
  assert [json.loads(open(p).read())["results"]["a"] for p in (first, second)] == [1, 2]


def test_cli_unknown_task_is_one_line(tmp_path):
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=repo, JAX_PLATFORMS="cpu")
  done = subprocess.run([sys.executable, "-m", "bitjax", "eval", "--workdir", str(tmp_path),
                         "--tasks", "bitjax_choice,no_such_task"], capture_output=True,
                        text=True, env=env, timeout=300)
  assert done.returncode != 0
  assert "Traceback" not in done.stderr
  last = done.stderr.strip().splitlines()[-1]
  assert last.startswith("bitjax eval: tasks: unknown task 'no_such_task'")
  assert "bitjax_choice" in last and "lm-eval ls tasks" in last
