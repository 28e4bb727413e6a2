"""`jaxgpt train [config ...] [--key=value ...]` (the checkout's `python train.py`): train a GPT.

With no config file: the main job, `jaxgpt/configs/default.py` (a small character-level GPT on
Tiny Shakespeare, shipped with the package, trained with the CPU speedrun's recipe: about 3 minutes
on 2 CPU cores, then a few samples); --key=value flags still override it. Config files are paths or
built-in names (`jaxgpt train shakespeare_char`) and start from the plain defaults `--help` lists.
"""

import sys
from typing import List, Sequence

from jaxgpt.train.config import MAIN_JOB_CONFIG
from jaxgpt.train.loop import SUMMARY, TrainingDiverged, config_from_argv, train

DEFAULT_CONFIG = MAIN_JOB_CONFIG  # jaxgpt/configs/default.py: the main job
HELP = (f"{SUMMARY} With no config file (and --init_from=scratch), train.py starts from the built-in config "
        f"{DEFAULT_CONFIG!r} (jaxgpt/configs/{DEFAULT_CONFIG}.py: the main job, the speedrun's recipe); a config file "
        "starts from the defaults below.")


def with_default_config(argv: Sequence[str]) -> List[str]:
    """The command line with the main job's config first when it names no config file. Not when it
    continues or imports weights (--init_from other than scratch): a resume reads its own saved
    options and a GPT-2 or run directory brings its own architecture."""
    names_config = any(not arg.startswith("-") for arg in argv)
    init_from = [arg.split("=", 1)[1] for arg in argv if arg.startswith("--init_from=")]
    if names_config or (init_from and init_from[-1] != "scratch"):
        return list(argv)
    return [DEFAULT_CONFIG, *argv]


def main(argv: Sequence[str]) -> None:
    full_argv = with_default_config(argv)
    if len(full_argv) > len(argv) and not {"-h", "--help"} & set(argv):
        print(f"no config file given: the main job, jaxgpt/configs/{DEFAULT_CONFIG}.py (flags override it)")
    cfg = config_from_argv(full_argv, summary=HELP)
    try:
        train(cfg)
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
