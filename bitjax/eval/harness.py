"""lm-evaluation-harness adapter: a bitjax Decoder and its tokenizer as the harness's `LM`.

Every request is turned into token ids once, sorted by length (the harness's Collator)
and run in batches of `batch_size` rows padded to a few fixed lengths (powers of two up
to the context length), so one compiled program serves each length instead of one per
request. Every text is scored and continued as the start of a document: the training
pipeline ends each document with EOS, so EOS is what precedes one (`prefix_token_id`).

Scores of a row do not depend on the other rows of its batch, except for models that
quantize activations per tensor (the `1bit` preset), whose scales span the batch.
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

try:
  from lm_eval import utils as harness_utils
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
  from lm_eval.models.utils import Collator, normalize_gen_kwargs
except ImportError as e:  # the `eval` extra is not installed
  raise ImportError("bitjax.eval needs lm-evaluation-harness; install it with "
                    "pip install 'bitjax[eval]'") from e

from bitjax import files
from bitjax.eval.tasks import TASKS_DIR
from bitjax.infer import generate

# Shortest padded length: shorter requests share one compiled program.
MIN_BUCKET = 16
GENERATION_OPTIONS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")


@register_model("bitjax")
class BitjaxLM(LM):
  """A bitjax Decoder behind the harness's `loglikelihood`, `loglikelihood_rolling` and
  `generate_until`.

  model: a Decoder, `model(tokens[batch, seq]) -> logits[batch, seq, vocab]`.
  tokenizer: `encode(text) -> ids` (no BOS/EOS), `decode(ids) -> text`, `eos_id`, `pad_id`.
  max_length: the context length the model was trained with (config.train.seq_len);
    longer contexts keep their last tokens.
  batch_size: rows per compiled call; a generation batch carries one more, a filler row
    that pins the padded prompt length.
  seed: draws of sampled generations (tasks that set do_sample).
  max_gen_toks: new tokens of a generation whose task does not say.
  """

  def __init__(self, model: nnx.Module, tokenizer, max_length: int, batch_size: int = 8,
               seed: int = 0, max_gen_toks: int = 256):
    super().__init__()
    _check_positive_int("max_length", max_length)
    _check_positive_int("batch_size", batch_size)
    _check_positive_int("max_gen_toks", max_gen_toks)
    self.model, self.tokenizer = model, tokenizer
    self.max_length, self.batch_size = int(max_length), int(batch_size)
    self.seed, self.max_gen_toks = seed, int(max_gen_toks)
    self.model_info = {"max_length": self.max_length}
    self._graphdef, self._state = nnx.split(model)

  @classmethod
  def from_workdir(cls, workdir: str, step: int | None = None, **options) -> BitjaxLM:
    """The trained model of a run's workdir (the newest step unless `step`), its tokenizer
    and its training sequence length as the context length."""
    import bitjax  # bitjax.load is imported here so this module loads on its own

    run = bitjax.load(workdir, step=step)
    options.setdefault("max_length", run.config.train.seq_len)
    lm = cls(run.model, run.tokenizer, **options)
    lm.model_info.update(workdir=workdir, step=run.step)
    return lm

  @classmethod
  def create_from_arg_string(cls, arg_string: str, additional_config: dict | None = None):
    """`lm_eval --model bitjax --model_args workdir=WD[,step=N,max_length=L]`."""
    return cls.create_from_arg_obj(harness_utils.simple_parse_args_string(arg_string),
                                   additional_config)

  @classmethod
  def create_from_arg_obj(cls, arg_dict: dict, additional_config: dict | None = None):
    options = {**arg_dict, **{k: v for k, v in (additional_config or {}).items()
                              if v is not None}}
    if options.pop("device", None) is not None:
      raise ValueError("device: bitjax runs on JAX's devices; leave --device unset")
    options.pop("max_batch_size", None)  # bounds batch_size='auto', which is not offered
    if "workdir" not in options:
      raise ValueError("model_args: the bitjax model needs workdir=DIR (a bitjax run)")
    if isinstance(options.get("batch_size"), str):
      options["batch_size"] = _batch_size_arg(options["batch_size"])
    return cls.from_workdir(**options)

  @property
  def prefix_token_id(self) -> int:
    return int(self.tokenizer.eos_id)

  def get_model_info(self) -> dict:
    return dict(self.model_info)

  def loglikelihood(self, requests) -> list[tuple[float, bool]]:
    """Sum of the log-probabilities of each continuation after its context, and whether
    greedy decoding would produce it."""
    results = self._score([self._encode_pair(*request.args) for request in requests])
    for request, result in zip(requests, results):
      self.cache_hook.add_partial("loglikelihood", request.args, result)
    return results

  def loglikelihood_rolling(self, requests) -> list[float]:
    """Log-likelihood of each whole text: windows of `max_length` tokens, each token
    predicted once, the first after EOS (the harness's disjoint rolling windows)."""
    windows, owners = [], []
    for i, request in enumerate(requests):
      (text,) = request.args
      for window in harness_utils.get_rolling_token_windows(
          self._encode(text), prefix_token=self.prefix_token_id, max_seq_len=self.max_length,
          context_len=1):
        windows.append(harness_utils.make_disjoint_window(window))
        owners.append(i)
    totals = np.zeros(len(requests))
    np.add.at(totals, np.asarray(owners, np.int64), [log_prob for log_prob, _ in
                                                     self._score(windows)])
    results = [float(total) for total in totals]
    for request, result in zip(requests, results):
      self.cache_hook.add_partial("loglikelihood_rolling", request.args, result)
    return results

  def generate_until(self, requests) -> list[str]:
    """Continue each context with `bitjax.infer.generate` (greedy unless the task sets
    do_sample) for up to max_gen_toks tokens; the text stops before the first `until`
    string, and generation stops at EOS."""
    items = [(self._prompt(context), context, gen_kwargs)
             for context, gen_kwargs in (request.args for request in requests)]
    collator = Collator(items, sort_fn=lambda item: -len(item[0]), group_fn=lambda item: item[2],
                        group_by="gen_kwargs")
    texts = []
    for batch in collator.get_batched(n=self.batch_size):
      until, options = self._generation_options(batch[0][2])
      for (_, context, gen_kwargs), new_ids in zip(batch, self._generate([p for p, *_ in batch],
                                                                         **options)):
        text = _cut_at(self.tokenizer.decode(new_ids), until)
        self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        texts.append(text)
    return collator.get_original(texts)

  def _encode(self, text: str) -> list[int]:
    return [int(i) for i in self.tokenizer.encode(text)]

  def _prompt(self, context: str) -> list[int]:
    return [self.prefix_token_id, *self._encode(context)]

  def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids; the continuation's are cut from the ids of the whole
    text (so a subword tokenizer sees it as in running text), with the context's trailing
    spaces moved onto it (the harness puts word-boundary spaces there)."""
    spaces = len(context) - len(context.rstrip(" "))
    if spaces:
      context, continuation = context[:-spaces], context[-spaces:] + continuation
    context_ids = self._encode(context)
    return [self.prefix_token_id, *context_ids], self._encode(context + continuation)[
        len(context_ids):]

  def _score(self, pairs: Sequence[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
    """(log-probability, greedy?) of each continuation after its context, in batches of
    similar length; contexts longer than the context length lose their first tokens."""
    rows = []
    for context, continuation in pairs:
      if len(continuation) > self.max_length:
        raise ValueError(f"loglikelihood: a continuation of {len(continuation)} tokens does "
                         f"not fit max_length={self.max_length}; at most {self.max_length} "
                         "tokens can be scored at once")
      rows.append(((context + continuation)[-(self.max_length + 1):], len(continuation)))
    collator = Collator(rows, sort_fn=lambda row: -len(row[0]))
    results = []
    for batch in collator.get_batched(n=self.batch_size):
      length = self._bucket(max(len(tokens) - 1 for tokens, _ in batch), self.max_length)
      inputs = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      targets = np.full((self.batch_size, length), self.tokenizer.pad_id, np.int32)
      for i, (tokens, _) in enumerate(batch):
        inputs[i, :len(tokens) - 1] = tokens[:-1]
        targets[i, :len(tokens) - 1] = tokens[1:]
      log_probs, greedy = jax.device_get(_target_log_probs(
          self._graphdef, self._state, jnp.asarray(inputs), jnp.asarray(targets)))
      for i, (tokens, scored) in enumerate(batch):
        positions = slice(len(tokens) - 1 - scored, len(tokens) - 1)
        results.append((float(log_probs[i, positions].sum()), bool(greedy[i, positions].all())))
    return collator.get_original(results)

  def _generation_options(self, gen_kwargs: dict) -> tuple[list[str], dict]:
    """The stop strings and `generate` arguments of a request's generation kwargs."""
    options = normalize_gen_kwargs(gen_kwargs, default_max_gen_toks=self.max_gen_toks)
    unknown = sorted(set(options) - set(GENERATION_OPTIONS))
    if unknown:
      raise ValueError(f"generation_kwargs: {', '.join(unknown)} not supported by the bitjax "
                       f"model; allowed: {', '.join(GENERATION_OPTIONS)}")
    max_new_tokens = options["max_gen_toks"]
    if not 1 <= max_new_tokens < self.max_length:
      raise ValueError(f"max_gen_toks={max_new_tokens} leaves no room for a prompt in "
                       f"max_length={self.max_length}; allowed: 1 to {self.max_length - 1}")
    until = [stop for stop in options["until"] if stop]
    return until, dict(max_new_tokens=max_new_tokens,
                       temperature=float(options["temperature"]) if options["do_sample"] else 0.0,
                       top_k=options.get("top_k"), top_p=options.get("top_p"))

  def _generate(self, prompts: list[list[int]], max_new_tokens: int, **sampling) -> list:
    """New token ids of each prompt (left-truncated to leave room for them). Filler rows
    fill the batch, the first as long as the padded length, so every batch of a length
    bucket has the same shapes and reuses one compiled program."""
    room = self.max_length - max_new_tokens
    prompts = [prompt[-room:] for prompt in prompts]
    length = self._bucket(max(len(prompt) for prompt in prompts), room)
    fillers = [[self.prefix_token_id] * length] + [[self.prefix_token_id]] * (
        self.batch_size - len(prompts))
    rows = generate(self.model, prompts + fillers, max_new_tokens, seed=self.seed,
                    eos_id=self.tokenizer.eos_id, max_context=self.max_length, **sampling)
    return [row[len(prompt):] for prompt, row in zip(prompts, rows)]

  @staticmethod
  def _bucket(length: int, cap: int) -> int:
    """The padded length of a batch: the next power of two (at least MIN_BUCKET), at most
    `cap`."""
    return min(cap, max(MIN_BUCKET, 1 << max(length - 1, 0).bit_length()))


@functools.partial(jax.jit, static_argnames="graphdef")
def _target_log_probs(graphdef, state, inputs, targets):
  """log p(target) at every position, and whether the target is the argmax there."""
  logits = nnx.merge(graphdef, state)(inputs)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]
  return picked, jnp.argmax(logits, axis=-1) == targets


def task_manager(tasks: Sequence[str]):
  """A harness TaskManager that knows the repository's tasks (bitjax/eval/tasks) and, unless
  every requested task is one of them, the harness's own; ValueError naming an unknown
  task."""
  from lm_eval.tasks import TaskManager

  if not tasks:
    raise ValueError("tasks: none given; name one or more, e.g. bitjax_local")
  local = TaskManager(include_path=TASKS_DIR, include_defaults=False)
  if all(task in local.all_tasks for task in tasks):
    return local
  manager = TaskManager(include_path=TASKS_DIR)
  for task in tasks:
    if task not in manager.all_tasks and not (task.endswith(".yaml") and os.path.isfile(task)):
      raise ValueError(f"tasks: unknown task {task!r}; the repository's tasks are "
                       f"{', '.join(local.all_tasks)}, and `lm-eval ls tasks` lists the "
                       "harness's")
  return manager


def evaluate(lm: LM, tasks: Sequence[str], *, limit: int | float | None = None,
             num_fewshot: int | None = None, log_samples: bool = False, manager=None,
             **options) -> dict:
  """The harness's `simple_evaluate` of `lm` on `tasks` (names of the repository's tasks or
  the harness's, or YAML paths); `manager` is `task_manager(tasks)` when already built, and
  `options` go to simple_evaluate as they are."""
  from lm_eval import simple_evaluate

  tasks = list(tasks)
  options.setdefault("batch_size", getattr(lm, "batch_size", None))  # recorded in the results
  try:
    return simple_evaluate(model=lm, tasks=tasks, task_manager=manager or task_manager(tasks),
                           limit=limit, num_fewshot=num_fewshot, log_samples=log_samples,
                           **options)
  except ConnectionError as e:  # Hugging Face datasets, offline
    raise ConnectionError(f"{e}; the harness's own tasks download their datasets: run them "
                          "with network, or with a Hugging Face datasets cache that holds "
                          "them (HF_DATASETS_CACHE, HF_DATASETS_OFFLINE=1)") from e


def write_results(results: dict, workdir: str) -> str:
  """Write the harness's results to WORKDIR/eval/results-<time>.json, never over an earlier
  file; returns its path."""
  directory = os.path.join(workdir, "eval")
  files.makedirs(directory)
  stem = os.path.join(directory, f"results-{datetime.datetime.now():%Y%m%dT%H%M%S}")
  path, copies = f"{stem}.json", 1
  while files.exists(path):
    copies += 1
    path = f"{stem}-{copies}.json"
  files.write_atomic(path, json.dumps(results, indent=2, ensure_ascii=False,
                                      default=harness_utils.handle_non_serializable))
  return path


def evaluate_workdir(workdir: str, tasks: Sequence[str], *, limit: int | None = None,
                     num_fewshot: int | None = None, batch_size: int = 8,
                     step: int | None = None) -> tuple[dict, str]:
  """`python -m bitjax eval`: evaluate a run's model on `tasks`, write the results JSON into
  its workdir; returns the results and that file's path. Task names are checked before the
  model loads."""
  manager = task_manager(tasks)
  lm = BitjaxLM.from_workdir(workdir, step=step, batch_size=batch_size)
  results = evaluate(lm, tasks, limit=limit, num_fewshot=num_fewshot, manager=manager)
  return results, write_results(results, workdir)


def format_results(results: dict) -> str:
  """The harness's tables of the results (and of the groups, when there are any)."""
  tables = [harness_utils.make_table(results)]
  if results.get("groups"):
    tables.append(harness_utils.make_table(results, "groups"))
  return "\n".join(tables)


def _cut_at(text: str, until: Sequence[str]) -> str:
  ends = [text.find(stop) for stop in until if stop in text]
  return text[:min(ends)] if ends else text


def _check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"{name}={value!r} is not allowed; use an integer >= 1")


def _batch_size_arg(value: str) -> int:
  if not value.isdigit():
    raise ValueError(f"batch_size={value!r} is not allowed; use an integer >= 1 (there is "
                     "no 'auto')")
  return int(value)
