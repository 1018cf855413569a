"""Drive a GGUF hybrid exported by ``gdnc convert`` with onnxruntime alone (no gdnc): the index
inputs computed with numpy as docs/gguf-onnx.md says, the state pools kept between steps.

    gdnc convert examples/tiny-qwen35-f16.gguf -o out/tiny-qwen35.onnx [--target ort]
    python examples/drive_exported_onnx.py out/tiny-qwen35.onnx

Two sequences in slots 0 and 1 prefill prompts of 5 and 3 tokens in one batch, then decode one
greedy token each in a second batch; it prints each step's argmax tokens.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import onnxruntime as ort


@dataclass
class Sequence:
    """One sequence of a batch: its pool slot, the tokens already in its states, its new tokens."""

    slot: int
    past: int
    tokens: list[int]


def batch_inputs(seqs: list[Sequence], n_ctx: int, conv_kernel: int, all_logits: bool = True
                 ) -> dict[str, np.ndarray]:
    """The index inputs of one batch (docs/gguf-onnx.md, "Index inputs"), all int64."""
    C, N = conv_kernel, len(seqs)
    lengths = np.array([len(s.tokens) for s in seqs])
    cu = np.concatenate([[0], np.cumsum(lengths)])
    past = np.array([s.past for s in seqs])
    slots = np.array([s.slot for s in seqs])
    seq = np.repeat(np.arange(N), lengths)  # sequence of each packed token
    j = np.arange(cu[-1]) - cu[seq]  # index of each token within its sequence

    def conv_row(n: np.ndarray, p: np.ndarray) -> np.ndarray:
        """Row of [the N*(C-1) conv state rows; the T new inputs] holding input p of sequence n
        (p < 0: its conv state, -1 the newest)."""
        return np.where(p >= 0, N * (C - 1) + cu[n] + p, n * (C - 1) + (C - 1) + p)

    positions = past[seq] + j
    lq, seen = lengths.max(), past + lengths
    keys = np.arange(seen.max())
    inputs = {
        "tokens": np.concatenate([s.tokens for s in seqs]),
        "positions": positions,
        "state_slots": slots,
        "cu_seqlens": cu,
        "conv_rows": conv_row(seq[:, None], j[:, None] + np.arange(C) - (C - 1)),
        "conv_state_rows": conv_row(np.arange(N)[:, None], lengths[:, None] + np.arange(C - 1) - (C - 1)),
        "kv_write": np.stack([slots[seq], positions], axis=1),
        "q_rows": cu[:-1, None] + np.minimum(np.arange(lq), lengths[:, None] - 1),
        "kv_read": slots[:, None] * n_ctx + np.where(keys < seen[:, None], keys, 0),
        "o_rows": seq * lq + j,
        "logit_rows": np.arange(cu[-1]) if all_logits else cu[1:] - 1,
    }
    return {name: np.asarray(value, dtype=np.int64) for name, value in inputs.items()}


class Pools:
    """The state pools of a session: one float32 array per pool input, zeroed, of ``slots``
    slots and ``n_ctx`` cache positions (the inputs' other dims are the model's)."""

    def __init__(self, session: ort.InferenceSession, slots: int, n_ctx: int) -> None:
        sizes = {"P": slots, "n_ctx": n_ctx}
        self.arrays = {i.name: np.zeros([sizes.get(d, d) for d in i.shape], np.float32)
                       for i in session.get_inputs() if i.type == "tensor(float)"}
        self.n_ctx = n_ctx
        self.conv_kernel = next(a.shape[1] for n, a in self.arrays.items() if n.startswith("conv_state.")) + 1


def step(session: ort.InferenceSession, pools: Pools, seqs: list[Sequence]) -> np.ndarray:
    """Run one batch: the logits of every new token [T, n_vocab]; the pools become the
    model's ``<pool>.out`` outputs."""
    feeds = batch_inputs(seqs, pools.n_ctx, pools.conv_kernel)
    wanted = {i.name for i in session.get_inputs()}
    outputs = session.run(None, {**{k: v for k, v in feeds.items() if k in wanted}, **pools.arrays})
    named = dict(zip([o.name for o in session.get_outputs()], outputs))
    pools.arrays = {name: named[f"{name}.out"] for name in pools.arrays}
    return named["logits"]


def main(path: str) -> None:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    pools = Pools(session, slots=2, n_ctx=64)
    prompts = [[11, 22, 33, 44, 55], [66, 77, 88]]
    logits = step(session, pools, [Sequence(slot, 0, p) for slot, p in enumerate(prompts)])
    last = np.cumsum([len(p) for p in prompts]) - 1
    nxt = logits[last].argmax(-1)
    print("prefill: next tokens", nxt.tolist())
    logits = step(session, pools, [Sequence(slot, len(p), [int(t)]) for slot, (p, t) in
                                   enumerate(zip(prompts, nxt))])
    print("decode:  next tokens", logits.argmax(-1).tolist())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
