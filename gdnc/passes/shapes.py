"""Shape and dtype propagation through onnx's shape inference (with data propagation)."""

from __future__ import annotations

import onnx

from gdnc.ir.from_onnx import value_from_proto
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import proto_with_value_info


def infer_shapes(model: Model) -> int:
    """Fill ``Value.dtype``/``shape`` of every value onnx can infer; returns how many changed.

    Known information is never replaced by less (a rank-less inference keeps what we had).
    """
    proto = proto_with_value_info(model)
    g = model.graph
    try:
        inferred = onnx.shape_inference.infer_shapes(proto, strict_mode=False, data_prop=True)
    except Exception:  # noqa: BLE001 - inference is best effort; unknown shapes stay unknown
        return 0
    changed = 0
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        new = value_from_proto(vi)
        old = g.values.get(vi.name)
        if new.shape is None and new.dtype == 0:
            continue
        if old is None or old.shape is None or (new.shape is not None and _more_known(new.shape, old.shape)):
            if old is not None and old.dtype and not new.dtype:
                new.dtype = old.dtype
            g.values[vi.name] = new
            changed += 1
        elif old.dtype == 0 and new.dtype:
            old.dtype = new.dtype
            changed += 1
    return changed


def _more_known(new: tuple, old: tuple) -> bool:
    if len(new) != len(old):
        return False
    return sum(isinstance(d, int) for d in new) > sum(isinstance(d, int) for d in old)
