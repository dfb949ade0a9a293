"""MLP classifiers: `configs/mlp.py:DATASET[,precision=PRESET,hidden=H,layers=L]`.

DATASET: a scikit-learn bundled set (digits, breast_cancer, wine; task
classify_tabular, standardised features) or `stdlib_packages` (task classify_text:
TF-IDF over the 5,000 most frequent identifiers of standard-library code chunks ->
their top-level package, 10 classes).
hidden=1024, layers=1 is WideMLP (Galke & Scherp); layers > 1 stacks more hidden
layers of the same width. Every precision computes in float32, so a comparison
differs only in quantization. Examples:
  configs/mlp.py:digits,precision=b1.58
  configs/mlp.py:stdlib_packages,precision=b1.58-median --config.train.steps=600
  configs/mlp.py:digits,precision=b1.58-ln   (2411.05882's BitLinear: LayerNorm, 128/absmax, bias)
"""

from bitjax.data.tabular import TABULAR_DATASETS
from bitjax.train.config import default_config, parse_config_arg

# classes and feature count of each data set (checked against the data at validation)
SHAPES = {"digits": (10, 64), "breast_cancer": (2, 30), "wine": (3, 13),
          "stdlib_packages": (10, 5000)}
TEXT_DATASETS = ("stdlib_packages",)


def get_config(arg: str | None = None):
  args = parse_config_arg(arg, dataset="digits", precision="bf16", hidden=1024, layers=1)
  if args.dataset not in SHAPES:
    raise ValueError(f"dataset {args.dataset!r} is not one of {list(SHAPES)}")
  text = args.dataset in TEXT_DATASETS
  config = default_config("classify_text" if text else "classify_tabular")
  config.data.name = args.dataset
  if text:
    config.data.max_features = SHAPES[args.dataset][1]
  classes, features = SHAPES[args.dataset]
  config.model.update(precision=args.precision, input_dim=features, num_classes=classes,
                      hidden_sizes=(args.hidden,) * args.layers, compute_dtype="float32",
                      # WideMLP's dropout on bag-of-words; dense tabular inputs are few
                      dropout=0.5 if text else 0.1)
  config.data.eval_split = "test"  # fixed step count, no model selection on it
  config.train.update(batch_size=64, steps=200, eval_every=100,
                      eval_batches=1000, log_every=25, checkpoint_every=1000,
                      progress_bar=False)
  config.optim.update(lr=1e-3, stage2_lr=5e-4, warmup_steps=10, weight_decay=0.0)
  # Quantized presets: the two-stage reading these rates were chosen and measured with.
  config.optim.recipes.low_bit.schedule = "two_stage_restart"
  return config


assert set(SHAPES) == {*TABULAR_DATASETS, *TEXT_DATASETS}
