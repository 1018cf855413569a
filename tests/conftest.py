"""Session-wide test set-up: without a GPU, Triton kernels run through Triton's interpreter.

Triton reads TRITON_INTERPRET when a kernel module is imported, so it is set here, before
any test module imports one.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
