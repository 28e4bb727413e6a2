"""`jaxgpt finetune [config ...] [--key=value ...]` (the checkout's `python finetune.py`): fine-tune a
GPT through the shared training loop.

    jaxgpt finetune finetune_classify                    # embedded demo: code or prose?
    jaxgpt finetune finetune_classify --dataset=sms_spam
    jaxgpt finetune --out_dir=out-classify --classify="WINNER! Claim your prize"   # label probabilities
    jaxgpt finetune --help                               # every key with its default
"""

import sys
from typing import Sequence

from jaxgpt.finetune.config import SUMMARY, FinetuneConfig, setup_for
from jaxgpt.train.loop import TrainingDiverged, config_from_argv, train


def main(argv: Sequence[str]) -> None:
    cfg = config_from_argv(argv, FinetuneConfig, "finetune.py", SUMMARY)
    if cfg.classify is not None:
        from jaxgpt.finetune.classify import classify_texts  # lazy: only --classify loads the classifier

        notes = []
        probs = classify_texts(cfg.out_dir, [cfg.classify], notes=notes)[0]
        for note in notes:  # what the model could not read of the text, a run being written
            print(note, file=sys.stderr)
        for label, p in sorted(probs.items(), key=lambda kv: -kv[1]):
            print(f"{label}\t{p:.4f}")
        return
    try:
        train(cfg, setup_for(cfg))
    except TrainingDiverged as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
