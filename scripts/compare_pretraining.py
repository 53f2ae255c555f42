"""Does pretraining pay? The same fine-tuning recipe on the default task from (a) a
pretrained run and (b) random weights; prints a markdown table, writes OUT/results.json.

    python scripts/compare_pretraining.py --pretrained runs/pretrain --out runs/compare
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.finetune import compare_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(compare_main())
