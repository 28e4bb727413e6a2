"""Fine-tune a GPT through the shared training loop: `python finetune.py [configs/NAME.py] [--key=value ...]`.

    python finetune.py configs/finetune_classify.py                  # embedded demo: code or prose?
    python finetune.py configs/finetune_classify.py --dataset=sms_spam
    python finetune.py --out_dir=out-classify --classify="WINNER! Claim your prize"   # label probabilities
    python finetune.py --help                                        # every key with its default

The checkout's shim for `jaxgpt finetune` (the command line is jaxgpt.finetune.cli).
"""

import jaxgpt.course.bigram  # noqa: F401  registers --model=bigram's family: the core never imports the course
from jaxgpt.cli import main_guard
from jaxgpt.finetune.cli import main

if __name__ == "__main__":
    main_guard(main)
