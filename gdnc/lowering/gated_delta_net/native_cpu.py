"""The "native" backend's recurrent kernel: the recurrence in C (``recurrent.c``), one pass over
each state per token ("vk" layout; two for "kv"), every (sequence, value head) pair in parallel
over torch's OpenMP threads, the state held in a thread's buffer between its one read from the
pool and its one write back.

It takes launches whose float tensors are all fp32 (the runtime's CPU calls; views are made
contiguous around the call); any other launch (bf16 inputs or pools) runs the torch kernel
(``cpu.run_recurrent``).
``reason()`` says why the C kernel cannot run in this process (None when it can).
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from functools import cache
from pathlib import Path

import torch

from gdnc.errors import ExecutionError
from gdnc.lowering.gated_delta_net import cpu
from gdnc.lowering.gated_delta_net.launch import GdnLaunch
from gdnc.lowering.native import function
from gdnc.opset.gated_delta_net import L2NORM_EPS

SOURCE = Path(__file__).with_name("recurrent.c")
_P = ctypes.c_void_p


@cache
def _kernel() -> Callable[..., int] | str:
    """The C function, or why there is none."""
    return function(SOURCE, "gdnc_gdn_recurrent", (_P,) * 13 + (ctypes.c_long,) * 5 + (ctypes.c_int,) * 4
                    + (ctypes.c_float,) * 2 + (ctypes.c_int,) * 2)


def reason() -> str | None:
    """Why the C kernel cannot run in this process (None: it can)."""
    kernel = _kernel()
    return kernel if isinstance(kernel, str) else None


def _pointer(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def run_recurrent(launch: GdnLaunch, *, vector: bool = True) -> None:
    """The launch (see ``launch.py``) token by token: in C when its float tensors are fp32 (views
    are made contiguous around the call), else through the torch kernel. ``vector=False``: C's
    portable path (tests)."""
    kernel = _kernel()
    floats = [launch.q, launch.k, launch.v, launch.g, launch.beta, launch.o, launch.state_src,
              launch.state_dst, *([launch.token_states] if launch.token_states is not None else [])]
    if isinstance(kernel, str) or any(t.dtype != torch.float32 or t.device.type != "cpu" for t in floats):
        cpu.run_recurrent(launch)
        return
    if launch.num_seqs == 0:
        return
    inputs = [t.contiguous() for t in (launch.q, launch.k, launch.v, launch.g, launch.beta)]
    o, dst, ts = (None if t is None else t.contiguous() for t in (launch.o, launch.state_dst,
                                                                   launch.token_states))
    src = dst if launch.state_src is launch.state_dst else launch.state_src.contiguous()
    index = [t if t.dtype == torch.int64 and t.is_contiguous() else t.to(torch.int64).contiguous()
             for t in (launch.starts, launch.lengths, launch.in_index, launch.out_index)]
    shp, opts = launch.shapes, launch.opts
    status = kernel(*map(_pointer, (*inputs, o, src, dst, ts, *index)), launch.num_seqs, shp.H, shp.HV,
                    shp.K, shp.V, int(shp.kda), int(opts.state_layout == "vk"),
                    int(opts.head_map == "interleave"), int(opts.qk_l2norm), opts.scale, L2NORM_EPS,
                    torch.get_num_threads(), int(vector))
    if status:
        raise ExecutionError("gated_delta_net: the native kernel could not allocate its state buffers")
    for given, used in ((launch.o, o), (launch.state_dst, dst), (launch.token_states, ts)):
        if given is not None and used is not None and used is not given:  # a view: its copy took the writes
            given.copy_(used)
