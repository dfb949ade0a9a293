"""The tasks `config.task` can name."""

from __future__ import annotations

from bitjax.schema import check_one_of
from bitjax.train.tasks.base import Task
from bitjax.train.tasks.classification import (SequenceClassification, TabularClassification,
                                               TextClassification)
from bitjax.train.tasks.corpus import MaskedLM, Seq2Seq
from bitjax.train.tasks.graphs import NodeClassification
from bitjax.train.tasks.lm import LanguageModeling

TASKS: dict[str, type[Task]] = {
    "lm": LanguageModeling,
    "classify_tabular": TabularClassification,
    "classify_text": TextClassification,
    "node_classification": NodeClassification,
    "mlm": MaskedLM,
    "classify_sequence": SequenceClassification,
    "seq2seq": Seq2Seq,
}


def task_class(name: str) -> type[Task]:
  check_one_of("config.task", name, TASKS)
  return TASKS[name]


def get_task(config) -> Task:
  """The task `config.task` names, bound to `config`."""
  return task_class(config.task)(config)
