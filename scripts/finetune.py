"""Fine-tune a pretrained minibert on labelled text, or predict with a fine-tuned one.

    python scripts/finetune.py                                  # the default task, from runs/pretrain
    python scripts/finetune.py --train train.csv --validation dev.csv --out runs/task
    python scripts/finetune.py --model runs/finetune --predict "Create a new socket object."
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.finetune import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
