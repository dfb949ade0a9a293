"""T5-style encoder-decoders: `configs/encdec.py:OBJECTIVE[,precision=P,hidden=H,layers=L]`.

OBJECTIVE: `span_corruption` (T5 pretraining on windows of seq_len bytes of the
embedded stdlib corpus: 15% of the bytes in spans of mean length 3 become
sentinels; the target lists the spans) or `docstrings` (a stdlib function's code
-> the first line of its docstring). `layers` encoder and as many decoder layers;
heads = hidden / 32, SwiGLU width 3 x hidden, float32 compute for every
precision. Eval: teacher-forced loss and next-token accuracy on held-out files.
Examples:
  configs/encdec.py:span_corruption,precision=b1.58,hidden=128
  configs/encdec.py:span_corruption,precision=b1.58-ln   (2411.05882's BitLinear; no biases
                                                          here, see docs/design.md section 3)
"""

from bitjax.train.config import default_config, parse_config_arg

OBJECTIVES = ("span_corruption", "docstrings")


def get_config(arg: str | None = None):
  args = parse_config_arg(arg, objective="span_corruption", precision="bf16", hidden=64,
                          layers=2)
  if args.objective not in OBJECTIVES:
    raise ValueError(f"objective {args.objective!r} is not one of {list(OBJECTIVES)}")
  config = default_config("seq2seq")
  config.data.objective = args.objective
  # byte vocabulary (259) + [MASK] + 16 sentinels, rounded up to a multiple of 8
  config.model.update(precision=args.precision, hidden_size=args.hidden,
                      num_layers=args.layers, num_heads=max(args.hidden // 32, 1),
                      mlp_hidden_size=3 * args.hidden, vocab_size=280, compute_dtype="float32")
  docstrings = args.objective == "docstrings"
  config.data.target_len = 64 if docstrings else 32
  config.train.update(seq_len=256 if docstrings else 128, batch_size=16, steps=300,
                      eval_every=100, eval_batches=8, log_every=25, checkpoint_every=1000,
                      progress_bar=False)
  config.optim.update(lr=4e-3, stage2_lr=2.5e-3, warmup_steps=30)
  # Quantized presets: the two-stage reading these rates were chosen and measured with.
  config.optim.recipes.low_bit.schedule = "two_stage_restart"
  return config
