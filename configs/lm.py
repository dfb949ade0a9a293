"""Decoder-only LM configs: `configs/lm.py:SIZE[,precision=PRESET]`.

Sizes run from CPU-scale models (`nano` .. `base`) to the BitNet b1.58
paper shapes (`700m`, `1.3b`, `3b`, `3.9b`) and BitNet b1.58 2B4T (`2b4t`).
Examples:
  configs/lm.py:tiny,precision=b1.58
  configs/lm.py:700m,precision=bf16 --config.train.batch_size=256
"""

from bitjax.schema import optional
from bitjax.train.config import default_config, parse_config_arg

# hidden, layers, heads, mlp hidden; CPU sizes use SwiGLU with ~2.7x expansion.
CPU_SIZES = {
    "nano": (64, 2, 2, 192),
    "micro": (96, 3, 3, 256),
    "tiny": (128, 4, 4, 384),
    "mini": (192, 4, 6, 512),
    "small": (256, 6, 8, 704),
    "medium": (384, 6, 6, 1024),
    "base": (512, 8, 8, 1408),
}
# Paper shapes (DESIGN.md section 3): hidden, GLU size, heads, layers.
PAPER_SIZES = {
    "700m": (1536, 4096, 24, 24),
    "1.3b": (2048, 5460, 32, 24),
    "3b": (3200, 8640, 32, 26),
    "3.9b": (3200, 12800, 32, 26),
}
# Peak learning rates from the papers: b1.58 (stage 1, stage 2) and LLaMA.
PAPER_LR = {
    "700m": ((1.5e-3, 1e-3), 2.5e-4),
    "1.3b": ((1.2e-3, 8e-4), 2e-4),
    "3b": ((1.2e-3, 8e-4), 2e-4),
    "3.9b": ((1.2e-3, 8e-4), 2e-4),
}
SIZES = (*CPU_SIZES, *PAPER_SIZES, "2b4t")


def get_config(arg: str | None = None):
  args = parse_config_arg(arg, size="tiny", precision="bf16")
  if args.size not in SIZES:
    raise ValueError(f"size {args.size!r} is not one of {list(SIZES)}")
  config = default_config()
  config.model.precision = args.precision
  if args.size in CPU_SIZES:
    _cpu_scale(config, *CPU_SIZES[args.size])
  elif args.size in PAPER_SIZES:
    _paper_scale(config, args.size)
  else:
    _bitnet_2b4t(config)
  return config


def _cpu_scale(config, hidden, layers, heads, mlp):
  # bfloat16 compute for every precision, as on accelerators, so a comparison differs only
  # in quantization. The vocabulary follows config.data.tokenizer: 264 rows for bytes.
  config.model.update(hidden_size=hidden, num_layers=layers, num_heads=heads,
                      mlp_hidden_size=mlp, vocab_size=optional(int), compute_dtype="bfloat16")
  config.train.update(seq_len=256, batch_size=16, steps=300, eval_every=100, eval_batches=8,
                      log_every=20, checkpoint_every=100)
  # One peak rate for both at CPU scale (4e-3 beat 2e-3 and 8e-3 for bf16 on nano and micro
  # in 300-step runs); quantized presets then follow the two-stage recipe down to 2.5e-3.
  config.optim.update(warmup_steps=30, lr=4e-3, stage2_lr=2.5e-3)


def _paper_scale(config, size):
  # Pod-scale shapes scan their blocks, so a step compiles one block instead of 24 to 30.
  hidden, glu, heads, layers = PAPER_SIZES[size]
  config.model.update(hidden_size=hidden, num_layers=layers, num_heads=heads,
                      mlp_hidden_size=glu, vocab_size=32000, tie_embeddings=False, remat=True,
                      scan_layers=True)
  _paper_training(config)
  # The peak rate follows the precision after any --config.model.* override
  # (bitjax.train.config.resolve_config); stage2_lr only matters to the two-stage schedule.
  (lr1, lr2), llama_lr = PAPER_LR[size]
  config.optim.update(stage2_lr=lr2, recipes={"low_bit": {"lr": lr1},
                                              "full_precision": {"lr": llama_lr}})


def _bitnet_2b4t(config):
  config.model.update(hidden_size=2560, num_layers=30, num_heads=20, num_kv_heads=5,
                      mlp_hidden_size=6912, mlp_type="relu2_glu", rope_theta=500000.0,
                      tie_embeddings=True, vocab_size=128256, remat=True, scan_layers=True)
  _paper_training(config)
  config.optim.update(lr=1.5e-3, stage1_end_lr=8e-4, stage2_lr=5e-4)


def _paper_training(config):
  """Sequence 2048, 1M-token batches, 100B tokens, as in the b1.58 paper."""
  config.train.update(seq_len=2048, batch_size=512, steps=95_367, eval_every=2000,
                      eval_batches=16, log_every=50, checkpoint_every=2000)
  config.optim.update(warmup_steps=375)
