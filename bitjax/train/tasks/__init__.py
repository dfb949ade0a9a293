"""Tasks: what the one trainer trains. `config.task` picks one from TASKS.

  base            the Task interface every objective implements
  lm              language modelling (the decoder), with the next-token loss
  classification  the cross-entropy objective, in-memory rows, MLP and encoder classifiers
  graphs          node classification (GNN)
  corpus          masked LM (encoder) and seq2seq (encoder-decoder) from the LM corpus
  registry        TASKS, task_class, get_task

Batch iterators and the data sets' names and loaders live in bitjax.data (iterators,
loaders).
"""

from bitjax.train.tasks.base import Task
from bitjax.train.tasks.registry import TASKS, get_task, task_class

__all__ = ["TASKS", "Task", "get_task", "task_class"]
