"""Greedy generation speed with and without the key-value cache (issue 12), batch 1.

  python experiments/bench/generate.py --size tiny --new_tokens 256 --out experiments/bench/generate_cpu.txt
  python experiments/bench/generate.py --size nano --new_tokens 32 --repeats 1  # quick check

Three decoders of one shape (configs/lm.py's CPU sizes, vocabulary 264, random weights):
BF16, b1.58 in training mode (latent weights quantized on every call) and b1.58 packed
(`bitjax.infer.pack_model`). "cached" is `bitjax.infer.generate`: one prefill, then one
jitted while loop of decode steps over a fixed-size cache (the time includes the prefill).
"recompute" runs one jitted step per token that pushes the whole sequence, padded to the
fixed final length, through the training forward and takes the argmax at the last real
position. Each is compiled and run once first; then the models take turns, one timed run
each per round, so that load from other processes on a shared machine falls on all of
them alike. The table gives the median of `--repeats` rounds with the range of the
cached runs (slowest-fastest tok/s), and "same" counts how many of the new tokens the two methods agree on before
their first difference (bf16 rounding may part them; random weights give small margins).
Needs only jax, flax and numpy.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from bitjax.infer import generate, pack_model
from bitjax.models import Decoder, DecoderConfig

# hidden, layers, heads, mlp hidden: the CPU sizes of configs/lm.py (kept here so the
# benchmark does not need that file's ml_collections).
SIZES = {"nano": (64, 2, 2, 192), "tiny": (128, 4, 4, 384), "small": (256, 6, 8, 704)}
VOCAB = 264
MODELS = ("bf16", "b1.58", "b1.58-packed")


def build(name: str, size: str, compute_dtype: str) -> nnx.Module:
  hidden, layers, heads, mlp = SIZES[size]
  precision = "bf16" if name == "bf16" else "b1.58"
  cfg = DecoderConfig(precision=precision, vocab_size=VOCAB, hidden_size=hidden,
                      num_layers=layers, num_heads=heads, mlp_hidden_size=mlp,
                      compute_dtype=compute_dtype)
  model = Decoder(cfg, rngs=nnx.Rngs(0))
  return pack_model(model)[0] if name.endswith("packed") else model


def recompute_generator(model: nnx.Module):
  """Greedy decoding without a cache, `run(prompt, new_tokens)`: every token reruns the
  whole sequence, padded to its final length, through one jitted training forward."""
  graphdef, state = nnx.split(model)
  # Plain arrays in, so a call costs the forward and not the flattening of NNX state.
  leaves, treedef = jax.tree.flatten(state)

  @jax.jit
  def step(leaves, tokens, length):
    logits = nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(tokens)
    token = jnp.argmax(jax.lax.dynamic_index_in_dim(logits[0], length - 1, keepdims=False))
    return jax.lax.dynamic_update_index_in_dim(tokens, token.astype(tokens.dtype)[None], length,
                                               axis=1)

  def run(prompt: np.ndarray, new_tokens: int) -> np.ndarray:
    tokens = jnp.zeros((1, len(prompt) + new_tokens), jnp.int32).at[0, :len(prompt)].set(prompt)
    for length in range(len(prompt), len(prompt) + new_tokens):
      tokens = step(leaves, tokens, length)
    return np.asarray(tokens[0])

  return run


def first_run(run) -> tuple[float, np.ndarray]:
  """(seconds of the first call, compile included; its output)."""
  start = time.perf_counter()
  out = run()
  return time.perf_counter() - start, out


def seconds(run) -> float:
  start = time.perf_counter()
  run()
  return time.perf_counter() - start


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--size", default="tiny", choices=list(SIZES))
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"comma-separated, from {list(MODELS)}")
  parser.add_argument("--prompt_len", type=int, default=16)
  parser.add_argument("--new_tokens", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--compute_dtype", default="bfloat16",
                      help="compute dtype of every model (configs/lm.py's CPU sizes use bfloat16)")
  parser.add_argument("--out", default=None, help="also write the table to this file")
  args = parser.parse_args(argv)
  models = args.models.split(",")
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f"--models: unknown {unknown}; allowed: {list(MODELS)}")

  prompt = np.random.default_rng(0).integers(0, VOCAB, args.prompt_len).astype(np.int32)
  n = args.new_tokens
  lines = [f"# greedy generation, batch 1, size {args.size} {SIZES[args.size]}, prompt "
           f"{args.prompt_len}, {n} new tokens, compute {args.compute_dtype}, "
           f"{jax.devices()[0].device_kind}, jax {jax.__version__}, median of {args.repeats} "
           "interleaved rounds",
           "| model | cached tok/s | cached range tok/s | recompute tok/s | speedup "
           "| cached first call s | recompute first call s | same |",
           "|---|---|---|---|---|---|---|---|"]
  for line in lines:
    print(line, flush=True)
  runs, firsts, same = {}, {}, {}
  for name in models:
    model = build(name, args.size, args.compute_dtype)
    recompute = recompute_generator(model)
    runs[name] = (lambda model=model: generate(model, [prompt], n)[0],
                  lambda recompute=recompute: recompute(prompt, n))
    (cached_first, cached_out), (plain_first, plain_out) = map(first_run, runs[name])
    firsts[name] = (cached_first, plain_first)
    differ = np.flatnonzero(cached_out[len(prompt):] != plain_out[len(prompt):])
    same[name] = int(differ[0]) if differ.size else n
  times = {name: ([], []) for name in models}
  for _ in range(args.repeats):
    for name in models:
      for run, spent in zip(runs[name], times[name]):
        spent.append(seconds(run))
  for name in models:
    cached, plain = times[name]
    line = (f"| {name} | {n / statistics.median(cached):,.1f} "
            f"| {n / max(cached):,.0f}-{n / min(cached):,.0f} "
            f"| {n / statistics.median(plain):,.1f} "
            f"| {statistics.median(plain) / statistics.median(cached):,.1f}x "
            f"| {firsts[name][0]:.1f} | {firsts[name][1]:.1f} | {same[name]}/{n} |")
    lines.append(line)
    print(line, flush=True)
  if args.out:
    with open(args.out, "w") as f:
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
