import os
import sys
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TRAIN_DIR = Path(__file__).resolve().parent.parent
REPO = TRAIN_DIR.parent.parent
TINY_QWEN2 = REPO / "tests" / "fixtures" / "tiny-qwen2"
sys.path.insert(0, str(TRAIN_DIR))

import torch  # noqa: E402

torch.set_num_threads(1)
