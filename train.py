"""Train a GPT: `python train.py [configs/NAME.py] [--key=value ...]` (see --help).

With no arguments: a small character-level GPT on the embedded default corpus (Python's own
standard-library source), a few minutes on 2 CPU cores, then a few samples.
"""

import dataclasses
import json
import os
import sys

from jaxgpt.cli import main_guard, parse_args
from jaxgpt.trainer import OPTIONS, TrainingDiverged, train

SUMMARY = ("Train a GPT (nanoGPT conventions). Config files are plain Python assigning these keys; "
           "--key=value overrides them. batch_size is the global batch of one micro-step on any mesh, "
           "so a config gives the same losses on 1 device or 256.")


def main(argv):
    opts = parse_args(OPTIONS, argv, "train.py", SUMMARY)
    saved = os.path.join(opts["out_dir"], "run_config.json")
    if opts["init_from"] == "resume" and os.path.exists(saved):
        # Resume with the run's own options; only what is given again on this command line changes.
        with open(saved) as f:
            previous = json.load(f)
        options = {k: dataclasses.replace(o, default=previous.get(k, o.default)) for k, o in OPTIONS.items()}
        opts = parse_args(options, argv, "train.py", SUMMARY)
    try:
        train(opts)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main_guard(main)
