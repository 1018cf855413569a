"""Session-wide test set-up: without a GPU, Triton kernels run through Triton's interpreter;
gdnc's graph cache lives in a folder of this test session's own (never the user's cache).

Triton reads TRITON_INTERPRET when a kernel module is imported, so it is set here, before
any test module imports one. The cache folder is inherited by the CLI subprocesses the tests
start.
"""

import atexit
import os
import shutil
import tempfile

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ["GDNC_CACHE_DIR"] = _CACHE = tempfile.mkdtemp(prefix="gdnc-test-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
