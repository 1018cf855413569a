"""The qwen hybrid's batch index inputs: the closed form of a decode batch (one token per
sequence, ``decode_layout``) equals the general packed layout's (``packed_layout``) for every
conv kernel, batch size, past lengths and slots."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from gdnc.models.qwen_hybrid.batch import decode_layout, packed_layout


@given(st.integers(1, 6), st.integers(1, 9), st.booleans(), st.data())
def test_the_decode_layout_is_the_packed_layout_of_one_token_each(C: int, N: int, all_logits: bool,
                                                                  data: st.DataObject) -> None:
    tokens = np.array(data.draw(st.lists(st.integers(0, 1000), min_size=N, max_size=N)), dtype=np.int64)
    past = np.array(data.draw(st.lists(st.integers(0, 500), min_size=N, max_size=N)), dtype=np.int64)
    slots = np.array(data.draw(st.permutations(range(12)))[:N], dtype=np.int64)
    want = packed_layout(C, [(int(t),) for t in tokens], past, slots, all_logits)
    got = decode_layout(C, tokens, past, slots)
    assert got.keys() == want.keys()
    for name, value in want.items():
        assert got[name].dtype == value.dtype and np.array_equal(got[name], value), name
