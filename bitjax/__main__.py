"""Command line: `python -m bitjax {train,compare} --config FILE.py:ARG --workdir DIR`."""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "compare")

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/lm.py:tiny",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and results.")
flags.DEFINE_list("precisions", ["bf16", "b1.58"], "Presets that `compare` trains.")


def main(argv):
  if len(argv) != 2 or argv[1] not in COMMANDS:
    raise app.UsageError(f"usage: python -m bitjax {{{','.join(COMMANDS)}}} --config ... "
                         f"--workdir ...; got {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # progress comes from our own lines and bar
  cfg, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if cfg is None or not workdir:
    raise app.UsageError("--config and --workdir are required")
  from bitjax.train.config import ConfigError
  try:
    _run_command(argv[1], cfg, workdir)
  except ConfigError as e:
    sys.exit(f"bitjax {argv[1]}: bad config: {e}")


def _run_command(command, cfg, workdir):
  from bitjax.sweep.compare import compare_precisions, format_comparison
  if command == "train":
    from bitjax.train import train_and_evaluate
    print(format_comparison([train_and_evaluate(cfg, workdir)]))
  else:
    config_flag = flags.FLAGS["config"]
    summaries = compare_precisions(config_flags.get_config_filename(config_flag), workdir,
                                   flags.FLAGS.precisions,
                                   config_flags.get_override_values(config_flag))
    print(format_comparison(summaries))


def run():
  app.run(main)


if __name__ == "__main__":
  run()
