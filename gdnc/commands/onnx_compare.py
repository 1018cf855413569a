"""``gdnc compare``: the original graph in onnxruntime vs the converted graph in gdnc and ORT."""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from gdnc.errors import ExecutionError, InputError, ModelLoadError, first_line
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import model_to_proto
from gdnc.opset.gated_delta_net import input_of, is_fused
from gdnc.opset.onnx_ops.dtypes import array_from_tensor, torch_dtype
from gdnc.passes.convert import emit_target
from gdnc.passes.pipeline import fuse_model
from gdnc.runtime.executor import Executor

MAX_RANDOM_ELEMENTS = 1 << 28  # per input: 1 GiB of fp32 drawn at most

FP32_TOLERANCE = 1e-5  # relative L2 (SPEC §6, recurrent fp32)


@dataclass
class OutputDiff:
    name: str
    runner: str
    max_abs: float
    rel_l2: float
    passed: bool


@dataclass
class CompareResult:
    chains: int
    tolerance: float
    diffs: list[OutputDiff] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return bool(self.diffs) and all(d.passed for d in self.diffs)

    def to_json(self) -> dict:
        return {"chains": self.chains, "tolerance": self.tolerance, "passed": self.passed,
                "outputs": [vars(d) for d in self.diffs]}


def _ort_run(proto: onnx.ModelProto, feeds: Mapping[str, np.ndarray], which: str) -> list:
    """The outputs of ``proto`` run by onnxruntime (CPU) on ``feeds``; ModelLoadError when it
    does not load the model, ExecutionError when it fails to run it (``which`` names it)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(proto.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - ORT's exception types share no base class
        raise ModelLoadError(f"onnxruntime cannot load the {which} model: {first_line(exc)}") from exc
    try:
        return session.run(None, dict(feeds))
    except Exception as exc:  # noqa: BLE001 - as above
        raise ExecutionError(f"onnxruntime cannot run the {which} model: {first_line(exc)}") from exc


def gdn_input_roles(model: Model) -> dict[str, str]:
    """Which values fused nodes read as log-gate ("gate") or beta ("beta")."""
    roles: dict[str, str] = {}
    for _, node in model.graph.nodes():
        if is_fused(node):
            roles[input_of(node, "g")] = "gate"
            roles[input_of(node, "beta")] = "beta"
    return roles


_DIM_TOKEN = re.compile(r"\s*(\d{1,18}|[A-Za-z_][A-Za-z0-9_]*|[-+*])")


def dim_size(dim: str, sizes: Mapping[str, int], default: int = 2) -> int | None:
    """The size of a symbolic dim: a name (``sizes[name]``, else ``default``) or a sum of
    products of names and integers, as exporters write ``past + 1`` or ``2*batch``; None for
    anything else. Parsed by hand, never evaluated."""
    total, sign, product, operand = 0, 1, 1, True
    pos, end = 0, len(dim.rstrip())
    while pos < end:
        m = _DIM_TOKEN.match(dim, pos)
        if m is None:
            return None
        tok, pos = m.group(1), m.end()
        if operand and tok[0] not in "+-*":
            product *= int(tok) if tok.isdigit() else sizes.get(tok, default)
            operand = False
        elif not operand and tok == "*":
            operand = True
        elif not operand and tok in ("+", "-"):
            total, sign, product, operand = total + sign * product, 1 if tok == "+" else -1, 1, True
        else:
            return None
    return None if operand else total + sign * product


def random_inputs(
    model: Model, seed: int = 0, roles: dict[str, str] | None = None, dims: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Fresh random inputs for every graph input: log-gates <= 0 and betas in (0, 1) for the
    inputs named in ``roles``. Symbolic dims take ``dims[name]`` (default 2); a dim written as
    arithmetic over names (``past + 1``) is computed from them (see ``dim_size``)."""
    rng = np.random.default_rng(seed)
    roles = roles or {}
    g = model.graph
    feeds: dict[str, np.ndarray] = {}
    for name in g.inputs:
        if name in g.initializers:
            continue
        spec = g.value(name)
        if spec.shape is None:
            raise InputError(f"input {name!r} has no known rank; pass --inputs")
        sized = [d if isinstance(d, int) else dim_size(str(d), dims or {}) for d in spec.shape]
        shape = [d for d in sized if d is not None and d >= 0]
        if len(shape) != len(sized):
            raise InputError(f"input {name!r} has a dim in {spec.shape} that random inputs cannot "
                             "size; pass --inputs")
        if math.prod(shape) > MAX_RANDOM_ELEMENTS:
            raise InputError(f"input {name!r} declares shape {shape} ({math.prod(shape)} elements, "
                             f"over {MAX_RANDOM_ELEMENTS} for random inputs); pass --inputs")
        dtype = torch_dtype(spec.dtype)
        if dtype.is_floating_point:
            x = rng.standard_normal(shape)
            if roles.get(name) == "gate":
                x = -np.log1p(np.exp(x))
            elif roles.get(name) == "beta":
                x = 1.0 / (1.0 + np.exp(-x))
            feeds[name] = x.astype(str(dtype).removeprefix("torch."))
        else:
            feeds[name] = rng.integers(0, 4, shape).astype(str(dtype).removeprefix("torch."))
    return feeds


def _diff(name: str, runner: str, got: np.ndarray, ref: np.ndarray, tol: float) -> OutputDiff:
    got64, ref64 = got.astype(np.float64), ref.astype(np.float64)
    if got64.shape != ref64.shape:
        return OutputDiff(name, runner, float("inf"), float("inf"), False)
    err = got64 - ref64
    max_abs = float(np.max(np.abs(err))) if err.size else 0.0
    denom = float(np.linalg.norm(ref64))
    rel = float(np.linalg.norm(err) / denom) if denom else max_abs
    ok = bool(np.all(np.isfinite(got64)) and rel <= tol)
    return OutputDiff(name, runner, max_abs, rel, ok)


def compare_file(
    path: str | Path, *, inputs: dict[str, np.ndarray] | None = None, target: str = "native",
    seed: int = 0, tolerance: float = FP32_TOLERANCE,
) -> CompareResult:
    """Run the original model in onnxruntime and the converted one in gdnc and in onnxruntime."""
    original = load_onnx(path)
    converted = copy.deepcopy(original)
    report = fuse_model(converted)
    roles = gdn_input_roles(converted)
    emit_target(converted, target)
    feeds = inputs if inputs is not None else random_inputs(original, seed, roles)
    ours = Executor(converted).run(feeds)  # first: it checks every feed, one line naming the input
    reference = _ort_run(model_to_proto(original), feeds, "original")
    theirs = _ort_run(model_to_proto(converted), feeds, "converted")
    result = CompareResult(chains=len(report.chains), tolerance=tolerance)
    names = original.graph.outputs
    for name, ref, gd, ort_out in zip(names, reference, ours.values(), theirs):
        result.diffs.append(_diff(name, "gdnc", array_from_tensor(gd), ref, tolerance))
        result.diffs.append(_diff(name, f"onnxruntime ({target})", np.asarray(ort_out), ref, tolerance))
    return result
