"""BERT-style encoders: `configs/encoder.py:TASK[,precision=P,hidden=H,layers=L]`.

TASK: `mlm` (masked-byte pretraining on the embedded stdlib corpus: 15% of the
bytes, 80/10/10; eval loss over the masked bytes of held-out files) or
`classify_sequence` (which top-level stdlib package a chunk of seq_len bytes is
from, 10 classes). Heads = hidden / 32, SwiGLU width 3 x hidden, float32 compute for
every precision. Examples:
  configs/encoder.py:mlm,precision=b1.58,hidden=128
  configs/encoder.py:classify_sequence,hidden=64 --config.train.steps=500
  configs/encoder.py:mlm,precision=b1.58-ln   (2411.05882's BitLinear; no biases here, see
                                               docs/design.md section 3)
"""

from bitjax.train.config import default_config, parse_config_arg

TASKS = ("mlm", "classify_sequence")


def get_config(arg: str | None = None):
  args = parse_config_arg(arg, task="mlm", precision="bf16", hidden=64, layers=2)
  if args.task not in TASKS:
    raise ValueError(f"task {args.task!r} is not one of {list(TASKS)}")
  config = default_config(args.task)
  config.model.update(precision=args.precision, hidden_size=args.hidden,
                      num_layers=args.layers, num_heads=max(args.hidden // 32, 1),
                      mlp_hidden_size=3 * args.hidden, vocab_size=264,
                      num_classes=10 if args.task == "classify_sequence" else 0,
                      compute_dtype="float32")
  config.train.update(seq_len=128, batch_size=16, steps=300, eval_every=100, eval_batches=8,
                      log_every=25, checkpoint_every=1000, progress_bar=False)
  if args.task == "classify_sequence":
    config.train.eval_batches = 1000  # the whole validation split
  config.optim.update(lr=4e-3, stage2_lr=2.5e-3, warmup_steps=30)
  # Quantized presets: the two-stage reading these rates were chosen and measured with.
  config.optim.recipes.low_bit.schedule = "two_stage_restart"
  return config
