"""Training: train_and_evaluate, optimizer and schedules, metrics, checkpoints."""

from bitjax.train.trainer import TrainState, train_and_evaluate

__all__ = ["TrainState", "train_and_evaluate"]
