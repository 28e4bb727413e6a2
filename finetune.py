"""Fine-tune a GPT through the shared training loop: `python finetune.py [configs/NAME.py] [--key=value ...]`.

    python finetune.py configs/finetune_classify.py                  # embedded demo: code or prose?
    python finetune.py configs/finetune_classify.py --dataset=sms_spam
    python finetune.py --out_dir=out-classify --classify="WINNER! Claim your prize"   # label probabilities
    python finetune.py --help                                        # every key with its default
"""

import sys

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.finetune.config import SUMMARY, FinetuneConfig, setup_for
from jaxgpt.train.loop import TrainingDiverged, config_from_argv, train


def main(argv):
    cfg = config_from_argv(argv, FinetuneConfig, "finetune.py", SUMMARY)
    if cfg.classify is not None:
        from jaxgpt.finetune.classify import classify_texts

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


if __name__ == "__main__":
    main_guard(main)
