"""The papers' published figures, to show beside bitjax's own measurements (never mixed
with them). Each record names its source; the values are copied from docs/design.md §10,
which collects them. They are the papers' claims, at their scale, not measured here."""

from __future__ import annotations

import math

# BitNet b1.58 (arXiv 2402.17764): validation perplexity after 100B tokens, against the
# LLaMA baseline it reproduced, at nominal (total) parameter counts.
B158_PERPLEXITY = {
    "source": "BitNet b1.58, arXiv 2402.17764 (100B tokens; docs/design.md §10)",
    "params": {"700M": 7e8, "1.3B": 1.3e9, "3B": 3e9},
    "tokens": 100e9,
    "bf16": {"700M": 12.33, "1.3B": 11.25, "3B": 10.04},  # the paper's LLaMA baseline
    "b1.58": {"700M": 12.87, "1.3B": 11.29, "3B": 9.91},
}

# "When are 1.58 bits enough?" (arXiv 2411.05882): test accuracy in %, 16-bit against
# 1.58-bit with mean (b1.58) and median (b1.58-median) weight scales.
SMALL_MODELS = {
    "source": "When are 1.58 bits enough?, arXiv 2411.05882 (docs/design.md §10)",
    "rows": [
        {"task": "SGC (K=2) on Cora", "bf16": 77.4, "b1.58": 77.5, "b1.58-median": 78.2},
        {"task": "SGC (K=2) on CiteSeer", "bf16": 63.4, "b1.58": 60.9, "b1.58-median": 65.5},
        {"task": "SGC (K=2) on PubMed", "bf16": 75.7, "b1.58": 76.0, "b1.58-median": 74.8},
        {"task": "WideMLP text classification (average)", "bf16": 83.03, "b1.58": 81.74,
         "b1.58-median": 82.01},
    ],
}


def b158_perplexity_ratios() -> list[dict]:
  """Per published size: parameters, both perplexities and b1.58 / LLaMA perplexity."""
  paper = B158_PERPLEXITY
  return [{"size": size, "params": paper["params"][size], "bf16": paper["bf16"][size],
           "b1.58": paper["b1.58"][size], "ratio": paper["b1.58"][size] / paper["bf16"][size]}
          for size in paper["params"]]


def perplexity_ratios(summary: dict, precision: str = "b1.58") -> list[dict]:
  """The same ratio from a bitjax scaling summary (bitjax.sweep.scaling.summarize): per
  size, non-embedding parameters and exp(loss - reference loss), the perplexity ratio of
  the seed-averaged losses."""
  entry = summary[precision]
  reference = summary[entry["reference"]]
  ref_loss = dict(zip(reference["groups"], reference["eval_loss"]))
  return [{"size": group, "params": n, "ratio": math.exp(loss - ref_loss[group])}
          for group, n, loss in zip(entry["groups"], entry["non_embedding_params"],
                                    entry["eval_loss"]) if group in ref_loss]
