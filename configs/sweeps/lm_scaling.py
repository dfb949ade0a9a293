"""Scaling sweeps of the decoder LM: `configs/sweeps/lm_scaling.py:PRESET[,seeds=N]`.

Presets:
  cpu             nano, micro, tiny x bf16, b1.58 (the README main job)
  cpu_large       nano .. small (45x in non-embedding parameters) x bf16, b1.58, 1bit
                  (experiments/scaling)
                  Both train every run for 300 steps of 16 x 128 bytes (0.61M tokens);
                  `steps=S` trains S steps instead and `sizes=nano+micro` keeps only those
                  sizes (a short sweep: colab/03_scaling_curves).
  cpu_equal_tokens  nano, micro, tiny x bf16, b1.58, each trained on `tpp` (default 2)
                  tokens per non-embedding parameter, so no size is undertrained relative to
                  another (experiments/scaling runs it with seeds=3)
  cpu_chinchilla  nano .. mini x 5, 10, 20, 40 tokens per parameter x bf16, b1.58
  paper           the BitNet b1.58 shapes 700m .. 3.9b x bf16, b1.58, 100B tokens each
  paper_chinchilla  700m .. 3b x 10, 20, 40 tokens per parameter x bf16, b1.58
  cpu_tokenizers  nano x bf16, b1.58 x bytes, a 1024-id byte-level BPE: bits per byte compare
                  them (300 steps of 16 x 128 tokens each). The BPE is trained offline first,
                  on the corpus's train split (about 15 s):
                    python -m bitjax tokenizer --config configs/lm.py:nano --vocab_size 1024 \
                      --out runs/bpe1024
                  then `--config configs/sweeps/lm_scaling.py:cpu_tokenizers` (another
                  directory: `cpu_tokenizers,bpe=DIR`).
"""

import functools
import itertools
import math
import os

from flax import nnx

from bitjax.models import Decoder, DecoderConfig, count_params
from bitjax.sweep.spec import make_runs, product
from bitjax.train.config import ConfigError, load_config, parse_config_arg, resolve_config

# configs/lm.py, relative to the working directory so results name it portably.
LM = os.path.relpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "lm.py"))
PRESETS = ("cpu", "cpu_large", "cpu_equal_tokens", "cpu_chinchilla", "paper", "paper_chinchilla",
           "cpu_tokenizers")
BPE_DIR = os.path.join("runs", "bpe1024")  # where the cpu_tokenizers preset's BPE is made


def get_sweep(arg=None):
  args = parse_config_arg(arg, preset="cpu", seeds=1, bpe=BPE_DIR, steps=0, sizes="",
                          tpp=2.0)
  if args.preset not in PRESETS:
    raise ValueError(f"sweep preset {args.preset!r} is not one of {list(PRESETS)}")
  seeds = list(range(args.seeds))
  if args.preset == "cpu_tokenizers":
    return tokenizer_runs(args.bpe, seeds)
  if args.preset in ("cpu", "cpu_large"):
    large = args.preset == "cpu_large"
    sizes = ["nano", "micro", "tiny", *(["mini", "small"] if large else [])]
    if args.sizes:
      unknown = sorted(set(args.sizes.split("+")) - set(sizes))
      if unknown:
        raise ValueError(f"sizes={args.sizes!r}: {unknown} not in preset {args.preset}'s {sizes}")
      sizes = [size for size in sizes if size in args.sizes.split("+")]
    if args.steps < 0:
      raise ValueError(f"steps={args.steps} must be positive (0: the configs' 300)")
    steps = {"train.steps": args.steps} if args.steps else {}
    items = product(size=sizes,
                    precision=["bf16", "b1.58", *(["1bit"] if large else [])],
                    **{"train.seed": seeds})
    # Half-length windows keep CPU sweeps short; the cpu runs are a subset of cpu_large.
    return make_runs(LM, items, shared={"train.seq_len": 128, **steps})
  if args.preset == "cpu_equal_tokens":
    if not args.tpp > 0:
      raise ConfigError(f"cpu_equal_tokens: tpp={args.tpp!r} must be a positive number of "
                        "tokens per parameter")
    items = [{"size": size, "precision": precision, "train.seed": seed,
              "train.steps": steps_for(size, args.tpp, seq_len=128)}
             for size, precision, seed in itertools.product(
                 ["nano", "micro", "tiny"], ["bf16", "b1.58"], seeds)]
    return make_runs(LM, items, shared={"train.seq_len": 128})
  if args.preset == "paper":
    items = product(size=["700m", "1.3b", "3b", "3.9b"], precision=["bf16", "b1.58"],
                    **{"train.seed": seeds})
  else:
    sizes = (["nano", "micro", "tiny", "mini"] if args.preset == "cpu_chinchilla"
             else ["700m", "1.3b", "3b"])
    ratios = [5, 10, 20, 40] if args.preset == "cpu_chinchilla" else [10, 20, 40]
    items = [{"size": size, "precision": precision, "train.seed": seed,
              "train.steps": steps_for(size, ratio)}
             for size, ratio, precision, seed in itertools.product(
                 sizes, ratios, ["bf16", "b1.58"], seeds)]
  return make_runs(LM, items)


def tokenizer_runs(bpe_dir: str, seeds: list[int]):
  """nano in bf16 and b1.58, on bytes and on the BPE in `bpe_dir`; the vocabulary follows
  each tokenizer (config.model.vocab_size None)."""
  if not os.path.isfile(os.path.join(bpe_dir, "tokenizer.json")):
    raise ConfigError(f"cpu_tokenizers: bpe={bpe_dir!r} holds no tokenizer.json; make it with "
                      f"`python -m bitjax tokenizer --config {LM}:nano --vocab_size 1024 "
                      f"--out {bpe_dir}`")
  shared = {"train.seq_len": 128}
  items = lambda tokenizer: product(size=["nano"], precision=["bf16", "b1.58"],
                                    **{"data.tokenizer": [tokenizer], "train.seed": seeds})
  return [*make_runs(LM, items("byte"), shared=shared),
          *make_runs(LM, items("bpe"), shared={**shared, "data.tokenizer_path": bpe_dir})]


def steps_for(size: str, tokens_per_param: float, seq_len: int | None = None) -> int:
  """Steps that give `tokens_per_param` training tokens per non-embedding parameter, at the
  config's batch size and `seq_len` (default: the config's)."""
  config = load_config(f"{LM}:{size}")
  tokens = tokens_per_param * non_embedding_params(size)
  return math.ceil(tokens / (config.train.batch_size * (seq_len or config.train.seq_len)))


@functools.cache
def non_embedding_params(size: str) -> int:
  config = resolve_config(load_config(f"{LM}:{size}"))
  model = nnx.eval_shape(lambda: Decoder(DecoderConfig.from_mapping(config.model),
                                         rngs=nnx.Rngs(0)))
  return count_params(model)["non_embedding"]
