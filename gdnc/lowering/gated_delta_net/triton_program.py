"""What one program of the Triton GatedDeltaNet kernels owns, and the constants they share.

The recurrent kernel and the chunked kernels' state walk launch one program per (value block,
value head, sequence), flattened as ``pid = (n * HV + hv) * NV + i_v``.
"""

import triton
import triton.language as tl

from gdnc.opset import gated_delta_net as fused_op

L2NORM_EPS = tl.constexpr(fused_op.L2NORM_EPS)  # qk_l2norm: x / sqrt(sum(x*x) + L2NORM_EPS)


@triton.jit
def sequence_program(starts, lengths, in_index, out_index, H: tl.constexpr, HV: tl.constexpr,
                     V: tl.constexpr, BV: tl.constexpr, INTERLEAVE: tl.constexpr):
    """(i_v, i_hv, i_h, i_n, start, length, slot_in, slot_out) of this program, all int64:
    its value block, value head, key head (head map "interleave": hv // (HV/H), "tile":
    hv % H), sequence, the sequence's first token and length, and its pool slots."""
    NV: tl.constexpr = (V + BV - 1) // BV
    pid = tl.program_id(0).to(tl.int64)
    i_v = pid % NV
    i_hv = (pid // NV) % HV
    i_n = pid // NV // HV
    if INTERLEAVE:
        i_h = i_hv // (HV // H)
    else:
        i_h = i_hv % H
    start = tl.load(starts + i_n).to(tl.int64)
    length = tl.load(lengths + i_n).to(tl.int64)
    slot_in = tl.load(in_index + i_n).to(tl.int64)
    slot_out = tl.load(out_index + i_n).to(tl.int64)
    return i_v, i_hv, i_h, i_n, start, length, slot_in, slot_out
