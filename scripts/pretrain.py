"""Pretrain BERT with MLM + NSP. No arguments: the whole default job on the embedded corpus
(trains the tokenizer, pretrains the tiny preset on CPU, evaluates, shows fill-mask examples).

    python scripts/pretrain.py [--preset tiny|mini|small|base] [--backend numpy|cupy] ...
    python scripts/pretrain.py --out runs/pretrain --resume      # continue after an interruption
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from minibert.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
