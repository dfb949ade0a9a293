"""Command line.

  python -m bitjax train   --config configs/lm.py:tiny,precision=b1.58 --workdir runs/t
  python -m bitjax compare --config configs/lm.py:tiny --precisions bf16,b1.58 --workdir runs/c
                           (a sweep of one run per precision: `plot --workdir runs/c` reads it)
  python -m bitjax sweep   --config configs/sweeps/lm_scaling.py:cpu --workdir runs/scaling
                           [--task_index=i --num_tasks=n] [--claim_timeout=600]
  python -m bitjax plot    --workdir runs/scaling
  python -m bitjax compile --config configs/lm.py:3b,precision=b1.58 --topology v5p:4x4x4
                           [--config.mesh.fsdp=-1 --config.mesh.data=1 --num_slices=2]
  python -m bitjax tokenizer --config configs/lm.py:nano --vocab_size 1024 --out runs/bpe1024
                           [--kind sentencepiece]  (trained on the corpus's train split)
  python -m bitjax generate --workdir runs/t --prompt "def " [--max_new_tokens 64
                           --temperature 0 --top_k K --top_p P --seed 0 --step S]
  python -m bitjax eval    --workdir runs/t --tasks bitjax_local
                           [--limit=N --num_fewshot=K --batch_size=B --step S]  (the `eval` extra)
  python -m bitjax import_hf --hf_dir DIR --workdir runs/imported [--config configs/lm.py:nano
                           --config.train.steps=100]  (train/data/optim sections; the model's
                           are the checkpoint's; then train --config configs/imported.py:WD)
  python -m bitjax export_hf --workdir runs/t --out DIR [--linear_class bitlinear --step S]
  python -m bitjax export_gguf --workdir runs/t --out FILE.gguf [--ternary_type tq1_0 --step S]
                           (a b1.58 SubLN run, for llama.cpp's bitnet architecture)

`--distributed=on` (or a multi-host environment, see bitjax.parallel.multihost) makes
train / compare / sweep join a multi-process job first.

A user error (a bad flag, config field, config file or workdir) ends in one line naming
it, exit status 1; so does a run stopped at a non-finite loss (WORKDIR/FAILED.json). SIGTERM
or SIGINT during training saves a checkpoint at the current step and exits with status 75
(bitjax.train.trainer.EXIT_INTERRUPTED); rerunning the command resumes.
"""

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "compare", "sweep", "plot", "compile", "tokenizer", "generate", "eval",
            "import_hf", "export_hf", "export_gguf")
FLAGS = flags.FLAGS

flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_list("precisions", ["bf16", "b1.58"], "Presets that `compare` trains.")
flags.DEFINE_integer("task_index", 0, "`sweep`: which share of the runs this process trains.")
flags.DEFINE_integer("num_tasks", 1, "`sweep`: into how many shares the runs are split.")
flags.DEFINE_float("claim_timeout", 600.0, "`sweep`, `compare`: seconds without a heartbeat "
                  "after which another process's claim on a run is taken over.", lower_bound=1.0)
flags.DEFINE_string("topology", None, "`compile`: TPU slice to compile for, e.g. v5e:4x4, v5p:4x4x4.")
flags.DEFINE_integer("num_slices", 1, "`compile`: how many such slices (config.mesh.dcn_* split them).")
flags.DEFINE_integer("vocab_size", None, "`tokenizer`: the vocabulary size to train.")
flags.DEFINE_string("out", None, "`tokenizer`: a new directory to save the tokenizer in; "
                    "`export_hf`: a new directory for the Hugging Face model; `export_gguf`: a new "
                    ".gguf file.")
flags.DEFINE_string("hf_dir", None, "`import_hf`: a Hugging Face model folder (config.json, "
                    "*.safetensors, tokenizer.json).")
flags.DEFINE_enum("linear_class", "autobitlinear", ["autobitlinear", "bitlinear"],
                  "`export_hf`: whether weight_scale multiplies (autobitlinear, as the released "
                  "models) or divides (bitlinear).")
flags.DEFINE_enum("ternary_type", "tq2_0", ["tq2_0", "tq1_0"],
                  "`export_gguf`: the GGML type of the ternary codes (TQ2_0: 2.06 bits a "
                  "weight, llama.cpp's faster; TQ1_0: 1.69 bits, smaller).")
flags.DEFINE_enum("kind", "bpe", ["bpe", "sentencepiece"],
                  "`tokenizer`: byte-level BPE (Hugging Face tokenizers) or SentencePiece.")
flags.DEFINE_string("prompt", None, "`generate`: the text to continue.")
flags.DEFINE_integer("max_new_tokens", 64, "`generate`: how many tokens to add at most.")
flags.DEFINE_float("temperature", 0.0, "`generate`: 0 is greedy; else the sampling temperature.")
flags.DEFINE_integer("top_k", None, "`generate`: sample among the k most likely tokens.")
flags.DEFINE_float("top_p", None, "`generate`: nucleus sampling mass, in (0, 1].")
flags.DEFINE_integer("seed", 0, "`generate`: the sampling seed.")
flags.DEFINE_integer("step", None, "`generate`, `eval`, `export_hf`, `export_gguf`: the checkpoint step "
                     "(default: the newest).")
flags.DEFINE_enum("distributed", "auto", ["auto", "on", "off"],
                  "Call jax.distributed.initialize(): auto = when the environment describes a "
                  "multi-process job (JAX_COORDINATOR_ADDRESS, with JAX_NUM_PROCESSES and "
                  "JAX_PROCESS_ID off TPU/Slurm; several TPU_WORKER_HOSTNAMES; Slurm); on Cloud "
                  "TPU VM pod slices pass `on`.")
flags.DEFINE_list("tasks", [], "`eval`: lm-evaluation-harness tasks, e.g. bitjax_local or "
                  "arc_easy,hellaswag.")
flags.DEFINE_integer("limit", None, "`eval`: at most this many examples per task.")
flags.DEFINE_integer("num_fewshot", None, "`eval`: few-shot examples (default: each task's).")
flags.DEFINE_integer("batch_size", 8, "`eval`: requests per model call.")


def _define_config_flag(command):
  """`--config` is a config file (with --config.x overrides) except for `sweep`, where it
  names a sweep file whose get_sweep(arg) lists the runs."""
  if command == "sweep":
    flags.DEFINE_string("config", None, "Sweep file, e.g. configs/sweeps/lm_scaling.py:cpu")
  elif command in ("generate", "eval", "export_hf", "export_gguf"):
    pass  # the run's own config.json
  else:
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lm.py:tiny",
                                    lock_config=True)


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m bitjax {{{','.join(COMMANDS)}}} --config ... "
                         f"--workdir ...; got {argv[1:]}")
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # progress comes from our own lines and bar
  command = argv[1]
  if command == "compile":
    if FLAGS.config is None or not FLAGS.topology:
      raise app.UsageError("`compile` needs --config and --topology (e.g. v5e:4x4)")
  elif command == "tokenizer":
    if FLAGS.config is None or not FLAGS.out or FLAGS.vocab_size is None:
      raise app.UsageError("`tokenizer` needs --config, --vocab_size and --out")
  elif command == "eval":
    if not FLAGS.workdir or not FLAGS.tasks:
      raise app.UsageError("`eval` needs --workdir and --tasks")
  elif command == "generate":
    if not FLAGS.workdir or FLAGS.prompt is None:
      raise app.UsageError("`generate` needs --workdir and --prompt")
  elif command == "import_hf":
    if not FLAGS.hf_dir or not FLAGS.workdir:
      raise app.UsageError("`import_hf` needs --hf_dir and --workdir")
  elif command == "export_hf":
    if not FLAGS.workdir or not FLAGS.out:
      raise app.UsageError("`export_hf` needs --workdir and --out")
  elif command == "export_gguf":
    if not FLAGS.workdir or not FLAGS.out:
      raise app.UsageError("`export_gguf` needs --workdir and --out")
  elif not FLAGS.workdir or (command != "plot" and FLAGS.config is None):
    raise app.UsageError("--workdir is required, and --config for all but `plot`")
  from bitjax.files import WorkdirError
  from bitjax.train.config import ConfigError
  from bitjax.sweep.runner import RunsFailed
  from bitjax.train.trainer import EXIT_INTERRUPTED, Interrupted, NonFiniteError
  try:
    if command == "compile":
      _compile()
    elif command == "tokenizer":
      _train_tokenizer()
    elif command == "generate":
      _generate()
    elif command == "eval":
      _eval()
    elif command in ("import_hf", "export_hf"):
      _exchange(command)
    elif command == "export_gguf":
      _export_gguf()
    else:
      from bitjax.parallel import initialize_distributed
      try:
        initialize_distributed(FLAGS.distributed)
      except ValueError as e:  # JAX_NUM_PROCESSES / JAX_PROCESS_ID malformed
        sys.exit(f"bitjax {command}: {e}")
      _run_command(command)
  except ConfigError as e:
    sys.exit(f"bitjax {command}: bad config: {e}")
  except (WorkdirError, NonFiniteError, RunsFailed) as e:
    sys.exit(f"bitjax {command}: {e}")
  except Interrupted as e:
    print(f"bitjax {command}: {e}", file=sys.stderr)
    sys.exit(EXIT_INTERRUPTED)


def _compile():
  """AOT-compile one train step of the config's task for --topology on this machine (no
  TPU needed)."""
  import os

  import jax
  if not os.environ.get("JAX_PLATFORMS"):
    # Only the TPU compiler is needed; keep jax from probing for a local TPU.
    jax.config.update("jax_platforms", "cpu")
  from bitjax.train.compile import compile_train_step, format_report
  from bitjax.train.config import ConfigError
  try:
    report = compile_train_step(FLAGS.config, FLAGS.topology, FLAGS.num_slices)
  except ConfigError:
    raise
  except (ValueError, RuntimeError) as e:  # a bad --topology, or no libtpu
    sys.exit(f"bitjax compile: {e}")
  print(format_report(report))


def _train_tokenizer():
  """Train a subword tokenizer on the train split of the config's corpus, into --out."""
  import time

  from bitjax.data import builders
  from bitjax.data.tokenizers import train_tokenizer
  from bitjax.train.config import resolve_config

  data = resolve_config(FLAGS.config).data
  source = builders.data_source(data, data.train_split)
  texts = (_text(source[i][data.text_key]) for i in range(len(source)))
  start = time.perf_counter()
  try:
    tokenizer = train_tokenizer(texts, FLAGS.kind, FLAGS.vocab_size, FLAGS.out)
  except ValueError as e:
    sys.exit(f"bitjax tokenizer: {e}")
  print(f"{FLAGS.kind} tokenizer of {tokenizer.vocab_size} ids, trained on {len(source)} "
        f"documents in {time.perf_counter() - start:.1f} s: {FLAGS.out}\n"
        f"train with --config.data.tokenizer={FLAGS.kind} "
        f"--config.data.tokenizer_path={FLAGS.out}")


def _text(value) -> str:
  return value.decode("utf-8", errors="replace") if isinstance(value, bytes) else value


def _generate():
  """Print the continuation of --prompt by the run in --workdir."""
  import bitjax

  if not FLAGS.prompt:
    sys.exit("bitjax generate: --prompt is empty; give the text to continue")
  try:
    run = bitjax.load(FLAGS.workdir, step=FLAGS.step)
  except ValueError as e:  # no run there, no such step, a newer format
    sys.exit(f"bitjax generate: {e}")
  try:
    text = run.generate(FLAGS.prompt, FLAGS.max_new_tokens, temperature=FLAGS.temperature,
                        top_k=FLAGS.top_k, top_p=FLAGS.top_p, seed=FLAGS.seed)
  except ValueError as e:  # a sampling value out of range, no room in the context
    sys.exit(f"bitjax generate: {e}")
  print(FLAGS.prompt + text)


def _eval():
  """Evaluate the run in --workdir on lm-evaluation-harness tasks: the results JSON goes to
  WORKDIR/eval/, the harness's table to stdout."""
  try:
    from bitjax.eval import evaluate_workdir, format_results
    results, path = evaluate_workdir(FLAGS.workdir, FLAGS.tasks, limit=FLAGS.limit,
                                     num_fewshot=FLAGS.num_fewshot, batch_size=FLAGS.batch_size,
                                     step=FLAGS.step)
  # No `eval` extra; a bad task name or argument; a harness dataset out of reach.
  except (ImportError, ValueError, ConnectionError) as e:
    sys.exit(f"bitjax eval: {e}")
  print(format_results(results))
  print(f"results: {path}")


def _exchange(command):
  """import_hf / export_hf: a Hugging Face model folder to a bitjax run, or back."""
  from bitjax.interop import InteropError, export_hf, import_hf

  try:
    if command == "import_hf":
      workdir = import_hf(FLAGS.hf_dir, FLAGS.workdir, FLAGS.config)
      print(f"imported {FLAGS.hf_dir} into {workdir} (step 0); continue training with: "
            f"python -m bitjax train --config configs/imported.py:{workdir} --workdir {workdir}")
    else:
      out = export_hf(FLAGS.workdir, FLAGS.out, step=FLAGS.step, linear_class=FLAGS.linear_class)
      print(f"exported {FLAGS.workdir} to {out}")
  except InteropError as e:
    sys.exit(f"bitjax {command}: {e}")


def _export_gguf():
  """export_gguf: a b1.58 SubLN run to a GGUF file for llama.cpp."""
  from bitjax.interop import InteropError
  from bitjax.interop.gguf import export_gguf

  try:
    counts = export_gguf(FLAGS.workdir, FLAGS.out, step=FLAGS.step,
                         ternary_type=FLAGS.ternary_type)
  except InteropError as e:
    sys.exit(f"bitjax export_gguf: {e}")
  kinds = ", ".join(f"{n} {name}" for name, n in counts.items())
  print(f"exported {FLAGS.workdir} to {FLAGS.out} ({kinds} tensors)")


def _run_command(command):
  from bitjax.sweep.compare import compare_precisions, format_comparison

  if command == "train":
    from bitjax.train import train_and_evaluate
    print(format_comparison([train_and_evaluate(FLAGS.config, FLAGS.workdir)]))
  elif command == "compare":
    config_flag = FLAGS["config"]
    rows = compare_precisions(config_flags.get_config_filename(config_flag), FLAGS.workdir,
                              FLAGS.precisions, config_flags.get_override_values(config_flag),
                              claim_timeout=FLAGS.claim_timeout)
    print(format_comparison(rows))
  else:
    from bitjax.sweep import report
    if command == "sweep":
      from bitjax.sweep.runner import run_sweep
      run_sweep(FLAGS.config, FLAGS.workdir, FLAGS.task_index, FLAGS.num_tasks,
                claim_timeout=FLAGS.claim_timeout)
    print(report.analyze(FLAGS.workdir))


def _parse_flags(argv):
  """absl's flag parsing, with every mistake in the flags (an unknown flag or config field,
  a value of the wrong type, a config file that is missing or refuses its argument) in
  one line naming the flag and what is allowed, instead of a traceback."""
  command = argv[1] if len(argv) > 1 else "?"
  try:
    args = FLAGS(argv)
  except flags.Error as e:  # absl's own, or a config file's error wrapped by it
    flag, _, message = str(e).partition(": ")
    sys.exit(f"bitjax {command}: {flag}: {_root_cause(e)}" if flag.startswith("flag --")
             and message else f"bitjax {command}: {' '.join(str(e).split())}")
  except (KeyError, AttributeError) as e:  # --config.x.y names no field
    sys.exit(f"bitjax {command}: {_unknown_field(argv) or _root_cause(e)}")
  # Only a given --config has a file name (import_hf's is optional; sweep's is a plain string).
  if "config" in FLAGS and FLAGS["config"].present and hasattr(FLAGS["config"],
                                                               "config_filename"):
    path = config_flags.get_config_filename(FLAGS["config"])
    path = path and path.partition(":")[0]
    if path and not os.path.isfile(path):
      sys.exit(f"bitjax {command}: --config: file {path!r} does not exist; give a config "
               "file such as configs/lm.py:tiny")
  return args


def _root_cause(error: BaseException) -> str:
  """The innermost exception of a chain, in one line, without ml_collections' tracebacks."""
  while error.__cause__ or error.__context__:
    error = error.__cause__ or error.__context__
  text = error.args[0] if isinstance(error, KeyError) and error.args else str(error)
  return " ".join(str(text).split())


def _unknown_field(argv) -> str | None:
  """For the first `--config.a.b=...` whose path the config file's config lacks: which
  section has no such field, and the fields it has."""
  from bitjax.train.config import load_config

  spec = next((arg.split("=", 1)[1] for arg in argv if arg.startswith("--config=")), None)
  if spec is None:
    return None
  config = load_config(spec)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    name = arg.split("=", 1)[0]
    node, walked = config, "config"
    for part in name[len("--config."):].split("."):
      if not hasattr(node, "keys") or part not in node:
        known = sorted(node.keys()) if hasattr(node, "keys") else []
        return f"{name}: {walked} has no field {part!r}; it has {known}"
      node, walked = node[part], f"{walked}.{part}"
  return None


def _storage_logs_without_tracebacks():
  """gcsfs logs every request it gives up on with the traceback (logger.exception); bitjax
  reports the failure itself in one line naming the workdir, so gcsfs's log keeps its
  one-line message only."""
  import logging as std_logging

  class NoTraceback(std_logging.Filter):
    def filter(self, record):
      record.exc_info, record.exc_text = None, None
      return True

  std_logging.getLogger("gcsfs").addFilter(NoTraceback())


def run():
  _define_config_flag(sys.argv[1] if len(sys.argv) > 1 else None)
  _storage_logs_without_tracebacks()
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
