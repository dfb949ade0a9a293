"""The README's "Extending bitjax" claim for a model family: a new language-model
architecture is its module and config plus a task naming them, registered in one place,
and then trains, checkpoints and compiles through the same trainer and compile report."""

import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bitjax.models.transformer import MLP, TransformerConfig, positions_like
from bitjax.nn import Attention, Embed, make_norm
from bitjax.train import train_and_evaluate
from bitjax.train.config import load_config
from bitjax.train.tasks import TASKS
from bitjax.train.tasks.lm import LanguageModeling

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class ParallelDecoderConfig(TransformerConfig):
  tie_embeddings: bool = True


class ParallelBlock(nnx.Module):
  """GPT-J's parallel block: attention and MLP read the same input, x + attn(h) + mlp(h)."""

  def __init__(self, cfg: ParallelDecoderConfig, *, rngs: nnx.Rngs):
    self.norm = None if cfg.spec.quantized else make_norm(cfg.norm, cfg.hidden_size,
                                                          eps=cfg.norm_eps, rngs=rngs)
    self.attn = Attention(cfg.hidden_size, cfg.num_heads, cfg.kv_heads, cfg.head_size,
                          spec=cfg.spec, norm=cfg.inner_norm, norm_eps=cfg.norm_eps,
                          rope_theta=cfg.rope_theta, dtype=cfg.dtype, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions):
    h = x if self.norm is None else self.norm(x)
    return x + self.attn(h, positions) + self.mlp(h)


class ParallelDecoder(nnx.Module):

  def __init__(self, cfg: ParallelDecoderConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = Embed(cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, rngs=rngs)
    self.layers = nnx.List([ParallelBlock(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = make_norm(cfg.norm, cfg.hidden_size, eps=cfg.norm_eps, rngs=rngs)
    self.lm_head = None

  def __call__(self, tokens):
    x, positions = self.embed(tokens), positions_like(tokens)
    for layer in self.layers:
      x = layer(x, positions)
    return self.embed.attend(self.final_norm(x)).astype(jnp.float32)


class ParallelLM(LanguageModeling):
  config_class, model_class = ParallelDecoderConfig, ParallelDecoder


@pytest.fixture
def parallel_lm():
  """The one registration, undone afterwards."""
  TASKS["parallel_lm"] = ParallelLM
  yield "parallel_lm"
  del TASKS["parallel_lm"]


def nano_config(task: str, precision: str):
  config = load_config(os.path.join(ROOT, "configs", "lm.py") + f":nano,precision={precision}",
                       {"train.steps": 6, "train.eval_every": 6, "train.log_every": 3,
                        "train.checkpoint_every": 6, "train.eval_batches": 1,
                        "train.batch_size": 4, "train.seq_len": 32, "train.progress_bar": False})
  with config.unlocked():
    config.task = task
  return config


def test_a_new_model_family_trains_through_its_task(parallel_lm, tmp_path):
  summary = train_and_evaluate(nano_config(parallel_lm, "b1.58"), str(tmp_path / "run"))
  assert summary["task"] == parallel_lm and summary["analysis"] == "scaling"
  assert np.isfinite(summary["eval_loss"]) and summary["eval_loss"] < np.log(264)
  # The closed-form FLOPs and the non-embedding count come from the LM task unchanged.
  assert summary["train_flops"] > 0 and 0 < summary["non_embedding_params"] < summary["params"]


def test_a_new_model_family_compiles_for_a_tpu_slice(parallel_lm):
  pytest.importorskip("libtpu", reason="AOT compiles need libtpu")
  from bitjax.train.compile import compile_train_step

  report = compile_train_step(nano_config(parallel_lm, "bf16"), "v5e:2x2")
  assert report.task == parallel_lm and report.fits
  assert report.memory.total > 0 and report.flops > 0


def test_the_registration_is_what_makes_the_task_known(tmp_path):
  with pytest.raises(ValueError, match="config.task='parallel_lm' is not one of"):
    train_and_evaluate(nano_config("parallel_lm", "bf16"), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()  # refused before the workdir was touched
