"""Evaluation through lm-evaluation-harness (the `eval` extra): `BitjaxLM` is the harness
model `bitjax`, registered when this package is imported; `evaluate` runs harness tasks
on it, including the repository's own offline tasks (bitjax/eval/tasks)."""

from bitjax.eval.harness import (BitjaxLM, evaluate, evaluate_workdir, format_results,
                                 task_manager, write_results)

__all__ = ["BitjaxLM", "evaluate", "evaluate_workdir", "format_results", "task_manager",
           "write_results"]
