"""The config of a run written by `python -m bitjax import_hf` (or any run), from its
config.json, so that `train` continues it:

  python -m bitjax train --config configs/imported.py:WORKDIR --workdir WORKDIR
"""

import json
import os

from bitjax.train.loading import saved_config


def get_config(workdir):
  path = os.path.join(workdir, "config.json")
  with open(path) as f:
    return saved_config(json.load(f), path)
