"""pytest setup for the exercises: the repository root on sys.path (the project is
flat files: model.py, tokenizer.py, ...) and a modest thread count (2 shared cores)."""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
