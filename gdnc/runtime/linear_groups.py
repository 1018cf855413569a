"""Which ``ai.gdnc::Linear`` nodes of a plan run as one call: those reading the same x with
weights bound as the file holds them (2-D ``PackedWeight``), like a layer's q/k/v/gate or
gate/up projections. ``packed.LinearGroup`` then reads all their weights in one pass."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from gdnc.lowering.quant.packed import PackedWeight
from gdnc.opset.packed_weights import DOMAIN, LINEAR

_OP = f"{DOMAIN}::{LINEAR}"


def linear_groups(steps: Sequence[Any], constants: Mapping[str, Any]) -> dict[int, list[int]]:
    """First step -> the positions of its group's steps (2 or more, in plan order): ``Linear``
    steps of ``steps`` (a ``GraphRunner``'s plan) reading one x, each with a 2-D bound weight."""
    by_input: dict[str, list[int]] = {}
    for k, step in enumerate(steps):
        if step.op != _OP or len(step.inputs) != 2 or not step.outputs[0]:
            continue
        w = constants.get(step.inputs[1])
        if isinstance(w, PackedWeight) and len(w.shape) == 2:
            by_input.setdefault(step.inputs[0], []).append(k)
    return {members[0]: members for members in by_input.values() if len(members) > 1}
