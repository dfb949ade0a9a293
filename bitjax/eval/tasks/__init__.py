"""lm-evaluation-harness tasks defined in the repository, with their data committed beside
them, so an evaluation runs with no network: `bitjax_choice` (multiple choice, acc and
acc_norm) and `bitjax_complete` (generation, exact_match), both under the tag
`bitjax_local`. `TASKS_DIR` is what the harness's TaskManager takes as `include_path`."""

from __future__ import annotations

import json
import os
from collections import defaultdict

TASKS_DIR = os.path.dirname(os.path.abspath(__file__))


def load_jsonl(data_file: str, **task_metadata) -> dict:
  """The task's splits from a JSONL file in this folder, one example a line, each with a
  "split" field. The harness calls this as the YAML's `custom_dataset` with the task's
  metadata as keywords too (its `version`), which the data does not depend on."""
  import datasets

  splits = defaultdict(list)
  with open(os.path.join(TASKS_DIR, data_file), encoding="utf-8") as f:
    for line in f:
      if line.strip():
        example = json.loads(line)
        splits[example.pop("split")].append(example)
  return {split: datasets.Dataset.from_list(rows) for split, rows in splits.items()}
