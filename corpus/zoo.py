"""Exported model zoo: unfused per-token gated-delta-rule graphs from ``torch.onnx.export``.

Every ``export_*`` function returns a :class:`ZooModel` (path of a self-contained ``.onnx``
file, example inputs keyed by graph-input name, the eager torch outputs keyed by graph-output
name, and metadata). Exports are cached per process (``functools.lru_cache`` keyed by the
arguments, files in a ``tempfile.mkdtemp()`` directory removed at exit); passing ``tmp_dir``
copies the cached file there so the caller owns (and may modify) its copy. Returned arrays
are fresh copies.

Models:

- :func:`export_hf` wraps the real HF ``torch_recurrent_gated_delta_rule`` (qwen3_next).
- :func:`export_variant` exports one record of :mod:`corpus.spellings` (names in
  :data:`~corpus.spellings.VARIANT_NAMES`), including near-misses that must NOT be fused.
- :func:`export_many_layers` chains ``n_layers`` HF delta-net calls through small Linears.
- :func:`catalog` lists a small representative set (used by the smoke test).

Graph inputs: ``q, k [B,T,H,K]``, ``v [B,T,HV,V]``, ``g [B,T,HV]`` (log decay; ``[B,T,HV,K]``
for KDA; the ``direct_decay`` variant names it ``a`` and feeds ``exp(g)``), ``beta [B,T,HV]``,
optional ``initial_state [B,HV,K,V]`` (``[B,HV,V,K]`` for the ``state_vk`` variant). All float32.
Graph outputs: ``o [B,T,HV,V]``, ``final_state`` (same layout as the initial state); the
``nearmiss_state_output`` variant adds ``state_step1``; the many-layer model has ``o`` and
``final_state_0 .. final_state_{n-1}``.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import io
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import onnx
import torch
from torch import nn

from .spellings import EXPORTERS, SPELLINGS, spelling
from .variants import hf_loop

Exporter = Literal["dynamo", "torchscript"]


@dataclass(frozen=True)
class ZooModel:
    path: str
    inputs: dict[str, np.ndarray]
    description: str
    #: eager torch outputs for ``inputs``, keyed by graph output name
    reference: dict[str, np.ndarray] = field(default_factory=dict)
    #: number of fused GatedDeltaNet nodes a correct pass should produce (0 = must not fuse)
    expect_fused: int = 1
    #: facts about the model: exporter, variant, B, T, H, HV, K, V, l2norm, gva, kda,
    #: state_layout ("kv"/"vk"), gate ("log"/"decay"), head_map, with_initial_state
    meta: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------- helpers

_LOCK = threading.RLock()
_CACHE_DIR: str | None = None


def _cache_dir() -> str:
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = tempfile.mkdtemp(prefix="gdnc_zoo_")
        atexit.register(shutil.rmtree, _CACHE_DIR, True)
    return _CACHE_DIR


@contextlib.contextmanager
def _silence() -> Iterator[None]:
    """Silence the exporters: Python-level prints, warnings, logging and fd 1/2 writes."""
    prev_disable = logging.root.manager.disable
    logging.disable(logging.CRITICAL)
    sys.stdout.flush()
    sys.stderr.flush()
    saved: list[int] = []
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                saved.append(os.dup(fd))
                os.dup2(devnull, fd)
            except OSError:  # no such fd (embedded interpreters)
                saved.append(-1)
        with (
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        for fd, s in zip((1, 2), saved):
            if s >= 0:
                os.dup2(s, fd)
                os.close(s)
        os.close(devnull)
        logging.disable(prev_disable)


def _torch_export(
    module: nn.Module,
    args: tuple[torch.Tensor, ...],
    path: str,
    input_names: list[str],
    output_names: list[str],
    exporter: str,
) -> None:
    module.eval()
    with _silence(), torch.no_grad():
        if exporter == "dynamo":
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=True,
                optimize=True,
                external_data=False,
                input_names=input_names,
                output_names=output_names,
            )
        elif exporter == "torchscript":
            torch.onnx.export(
                module,
                args,
                path,
                dynamo=False,
                opset_version=17,
                input_names=input_names,
                output_names=output_names,
            )
        else:
            raise ValueError(f"unknown exporter {exporter!r}")


def _eager(module: nn.Module, args: tuple[torch.Tensor, ...], output_names: list[str]):
    with torch.no_grad():
        out = module(*args)
    if isinstance(out, torch.Tensor):
        out = (out,)
    assert len(out) == len(output_names)
    return {n: t.detach().cpu().numpy() for n, t in zip(output_names, out)}


def _make_inputs(
    rng: np.random.Generator,
    *,
    B: int,
    T: int,
    H: int,
    HV: int,
    K: int,
    V: int,
    l2norm: bool,
    kda: bool = False,
    gate_is_decay: bool = False,
    with_initial_state: bool = False,
    state_layout: str = "kv",
) -> dict[str, np.ndarray]:
    f32 = np.float32
    q = rng.standard_normal((B, T, H, K)).astype(f32)
    k = rng.standard_normal((B, T, H, K))
    if not l2norm:  # keep beta*|k|^2 ~ O(1) so the recurrence stays bounded
        k = k / np.sqrt(K)
    gshape = (B, T, HV, K) if kda else (B, T, HV)
    decay = rng.uniform(0.6, 1.0, size=gshape)
    ins = {
        "q": q,
        "k": k.astype(f32),
        "v": rng.standard_normal((B, T, HV, V)).astype(f32),
        ("a" if gate_is_decay else "g"): (decay if gate_is_decay else np.log(decay)).astype(f32),
        "beta": rng.uniform(0.05, 0.95, size=(B, T, HV)).astype(f32),
    }
    if with_initial_state:
        sshape = (B, HV, K, V) if state_layout == "kv" else (B, HV, V, K)
        ins["initial_state"] = (0.1 * rng.standard_normal(sshape)).astype(f32)
    return ins


def _finish(cached: ZooModel, tmp_dir: str | os.PathLike | None) -> ZooModel:
    path = cached.path
    if tmp_dir is not None:
        os.makedirs(tmp_dir, exist_ok=True)
        path = os.path.join(os.fspath(tmp_dir), os.path.basename(cached.path))
        shutil.copyfile(cached.path, path)
    return ZooModel(
        path=path,
        inputs={k: v.copy() for k, v in cached.inputs.items()},
        description=cached.description,
        reference={k: v.copy() for k, v in cached.reference.items()},
        expect_fused=cached.expect_fused,
        meta=dict(cached.meta),
    )


def _check_exporter(exporter: str, allowed: tuple[str, ...] = EXPORTERS) -> None:
    if exporter not in allowed:
        raise ValueError(f"exporter must be one of {allowed}, got {exporter!r}")


def _sizes(shape: dict[str, int], l2norm: bool) -> str:
    """``T=.., B=.., H=.., HV=.., K=.., V=.., l2norm=..`` for descriptions."""
    return ", ".join(f"{n}={shape[n]}" for n in ("T", "B", "H", "HV", "K", "V")) + f", l2norm={l2norm}"


def _tag(
    prefix: str, exporter: str, shape: dict[str, int], l2norm: bool, gva: bool, init: bool, seed: int
) -> str:
    """Cache file stem of a single-call export (HF loop or variant)."""
    B, T, H, K, V = (shape[n] for n in ("B", "T", "H", "K", "V"))
    return (
        f"{prefix}_{exporter}_T{T}_{'l2' if l2norm else 'nol2'}_{'gva' if gva else 'mha'}"
        f"_B{B}H{H}K{K}V{V}{'_init' if init else ''}_s{seed}"
    )


def _meta(
    kind: str,
    exporter: str,
    shape: dict[str, int],
    *,
    l2norm: bool,
    gva: bool,
    seed: int,
    variant: str = "hf",
    n_layers: int | None = None,
    kda: bool = False,
    state_layout: str = "kv",
    gate: str = "log",
    with_initial_state: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``ZooModel.meta``: the HF defaults with the given overrides; ``extra`` keys go last."""
    meta: dict[str, Any] = dict(kind=kind, exporter=exporter, variant=variant)
    if n_layers is not None:
        meta["n_layers"] = n_layers
    meta.update(shape)
    meta.update(
        l2norm=l2norm,
        gva=gva,
        kda=kda,
        state_layout=state_layout,
        gate=gate,
        head_map="interleave",
        with_initial_state=with_initial_state,
        seed=seed,
    )
    meta.update(extra)
    return meta


def _build(
    module: nn.Module,
    inputs: dict[str, np.ndarray],
    out_names: list[str],
    tag: str,
    exporter: str,
    *,
    description: str,
    expect_fused: int,
    meta: dict[str, Any],
    export=_torch_export,
) -> ZooModel:
    """Export ``module`` on ``inputs`` (graph inputs named by the keys) into the cache as
    ``{tag}.onnx`` with ``export(module, args, path, input_names, out_names, exporter)``, run it
    eagerly for the reference outputs and wrap it all in a :class:`ZooModel`."""
    names = list(inputs)
    args = tuple(torch.from_numpy(inputs[n]) for n in names)
    path = os.path.join(_cache_dir(), tag + ".onnx")
    with _LOCK:
        export(module, args, path, names, out_names, exporter)
    return ZooModel(
        path=path,
        inputs=inputs,
        description=description,
        reference=_eager(module, args, out_names),
        expect_fused=expect_fused,
        meta=meta,
    )


@functools.cache
def _export_loop_cached(
    name: str,
    T: int,
    exporter: str,
    l2norm: bool,
    gva: bool,
    B: int,
    H: int,
    K: int,
    V: int,
    with_initial_state: bool,
    seed: int,
) -> ZooModel:
    """One per-token loop exported in one call: the spelling ``name`` ("hf": HF's function)."""
    hf = name == "hf"
    record = spelling(name)
    cls, fusable = record.module, record.must_fuse
    if record.square_state and K != V:
        raise ValueError(f"{name} needs K == V")
    shape = dict(B=B, T=T, H=H, HV=2 * H if gva else H, K=K, V=V)
    inputs = _make_inputs(
        np.random.default_rng(seed),
        **shape,
        l2norm=l2norm,
        kda=cls.kda,
        gate_is_decay=cls.gate_is_decay,
        with_initial_state=with_initial_state,
        state_layout=cls.state_layout,
    )
    out_names = ["o", "final_state", *record.extra_outputs]
    if hf:
        title, extra = "HF torch_recurrent_gated_delta_rule", {}
    else:
        title = f"variant {name!r} ({record.notes})"
        extra = dict(fusable=fusable, scale_spelling="mul" if cls.scale_by_mul else "div")
    return _build(
        cls(l2norm),
        inputs,
        out_names,
        _tag("hf" if hf else f"var_{name}", exporter, shape, l2norm, gva, with_initial_state, seed),
        exporter,
        description=(
            f"{title}, {exporter} export, {_sizes(shape, l2norm)}, initial_state={with_initial_state}"
        ),
        expect_fused=1 if fusable else 0,
        meta=_meta(
            "hf" if hf else "variant",
            exporter,
            shape,
            l2norm=l2norm,
            gva=gva,
            seed=seed,
            variant=name,
            kda=cls.kda,
            state_layout=cls.state_layout,
            gate="decay" if cls.gate_is_decay else "log",
            with_initial_state=with_initial_state,
            **extra,
        ),
    )


def export_hf(tmp_dir: str | os.PathLike | None = None, *, l2norm: bool = True,
              **kwargs: Any) -> ZooModel:
    """Export HF's per-token loop. ``gva`` -> HV = 2H (HF repeat_interleaves q, k itself);
    other arguments as :func:`export_variant`."""
    return export_variant(tmp_dir, name="hf", l2norm=l2norm, **kwargs)


# --------------------------------------------------------------------------- variants


def export_variant(
    tmp_dir: str | os.PathLike | None = None,
    *,
    name: str,
    T: int,
    exporter: Exporter = "dynamo",
    l2norm: bool = False,
    gva: bool = False,
    B: int = 2,
    H: int = 2,
    K: int = 8,
    V: int = 8,
    with_initial_state: bool = False,
    seed: int = 0,
) -> ZooModel:
    """Export one spelling (a record of :mod:`corpus.spellings`; "hf": HF's own loop)."""
    _check_exporter(exporter, spelling(name).exporters)
    return _finish(
        _export_loop_cached(
            name, T, exporter, bool(l2norm), bool(gva), B, H, K, V, bool(with_initial_state), seed
        ),
        tmp_dir,
    )


# --------------------------------------------------------------------------- many layers


class ManyLayers(nn.Module):
    """``n_layers`` HF delta-net calls; layer i's output -> Linear -> layer i+1's q, k, v, g, beta.

    Layer 0 reads the graph inputs; later layers compute their gates Qwen3-Next style
    (``g = -exp(A_log) * softplus(a + dt_bias)``, ``beta = sigmoid(b)``) from the projection.
    One projection is shared by all layers (so the stitched export, see
    :func:`export_many_layers`, can reuse one exported block).
    """

    def __init__(self, n_layers: int, H: int, HV: int, K: int, V: int, l2norm: bool) -> None:
        super().__init__()
        self.n_layers, self.H, self.HV, self.K, self.V = n_layers, H, HV, K, V
        self.l2norm = l2norm
        self.fn = hf_loop()
        # next layer's q | k | v | gate logits a | beta logits b
        self.proj = nn.Linear(HV * V, 2 * H * K + HV * V + 2 * HV)
        self.A_log = nn.Parameter(torch.log(torch.linspace(0.5, 2.0, HV)))
        self.dt_bias = nn.Parameter(torch.full((HV,), -2.0))

    def delta(self, q, k, v, g, beta):
        return self.fn(q, k, v, g, beta, None, output_final_state=True, use_qk_l2norm_in_kernel=self.l2norm)

    def next_inputs(self, o):
        B, T = o.shape[:2]
        H, HV, K, V = self.H, self.HV, self.K, self.V
        x = self.proj(o.reshape(B, T, HV * V))
        q, k, v, a, b = x.split([H * K, H * K, HV * V, HV, HV], dim=-1)
        g = -self.A_log.exp() * nn.functional.softplus(a + self.dt_bias)
        return (
            q.reshape(B, T, H, K),
            k.reshape(B, T, H, K),
            v.reshape(B, T, HV, V),
            g,
            torch.sigmoid(b),
        )

    def forward(self, q, k, v, g, beta):
        states = []
        o = v
        for i in range(self.n_layers):
            o, S = self.delta(q, k, v, g, beta)
            states.append(S)
            if i + 1 < self.n_layers:
                q, k, v, g, beta = self.next_inputs(o)
        return (o, *states)


class _Block(nn.Module):
    """One layer of :class:`ManyLayers` (``last``: returns (o, S); else next inputs + S)."""

    def __init__(self, owner: ManyLayers, last: bool) -> None:
        super().__init__()
        self.owner = owner
        self.last = last

    def forward(self, q, k, v, g, beta):
        o, S = self.owner.delta(q, k, v, g, beta)
        if self.last:
            return o, S
        return (*self.owner.next_inputs(o), S)


_BLOCK_IN = ["q", "k", "v", "g", "beta"]
_MID_OUT = ["q_next", "k_next", "v_next", "g_next", "beta_next", "final_state"]


def _stitch(mid: onnx.ModelProto | None, last: onnx.ModelProto, n_layers: int) -> onnx.ModelProto:
    """Chain ``n_layers - 1`` copies of ``mid`` and one ``last`` into one model.

    Values and nodes of layer i get the prefix ``l{i}/``; initializers are shared per block
    kind (prefix ``mid/`` or ``last/``); layer i's ``final_state`` becomes ``final_state_{i}``.
    """
    nodes: list[onnx.NodeProto] = []
    inits: dict[str, onnx.TensorProto] = {}
    vinfo: list[onnx.ValueInfoProto] = []
    cur = {n: n for n in _BLOCK_IN}
    for i in range(n_layers):
        is_last = i == n_layers - 1
        blk = last if is_last else mid
        assert blk is not None
        kind = "last" if is_last else "mid"
        g = blk.graph
        names: dict[str, str] = {}
        for j, inp in enumerate(g.input):
            names[inp.name] = cur[_BLOCK_IN[j]]
        for init in g.initializer:
            names[init.name] = f"{kind}/{init.name}"
            if names[init.name] not in inits:
                t = onnx.TensorProto()
                t.CopyFrom(init)
                t.name = names[init.name]
                inits[t.name] = t
        outs = [o.name for o in g.output]
        if is_last:
            names[outs[0]] = "o"
            names[outs[1]] = f"final_state_{i}"
        else:
            for o_name, canon in zip(outs, _MID_OUT):
                names[o_name] = f"l{i}/{canon}"
            names[outs[5]] = f"final_state_{i}"

        def ren(x: str, names=names, i=i) -> str:
            return "" if x == "" else names.get(x, f"l{i}/{x}")

        for node in g.node:
            n = onnx.NodeProto()
            n.CopyFrom(node)
            n.name = f"l{i}/{node.name}" if node.name else ""
            n.input[:] = [ren(x) for x in node.input]
            n.output[:] = [ren(x) for x in node.output]
            nodes.append(n)
        for vi in g.value_info:
            v = onnx.ValueInfoProto()
            v.CopyFrom(vi)
            v.name = ren(vi.name)
            vinfo.append(v)
        if not is_last:
            cur = {n: f"l{i}/{c}" for n, c in zip(_BLOCK_IN, _MID_OUT)}
    first = (mid if n_layers > 1 else last).graph
    outputs = []
    for i in range(n_layers):
        src = last.graph.output if i == n_layers - 1 else mid.graph.output  # type: ignore[union-attr]
        vi = onnx.ValueInfoProto()
        vi.CopyFrom(src[-1])
        vi.name = f"final_state_{i}"
        outputs.append(vi)
    o_vi = onnx.ValueInfoProto()
    o_vi.CopyFrom(last.graph.output[0])
    o_vi.name = "o"
    graph = onnx.helper.make_graph(
        nodes,
        "many_layers",
        list(first.input),
        [o_vi, *outputs],
        initializer=list(inits.values()),
        value_info=vinfo,
    )
    model = onnx.helper.make_model(
        graph,
        opset_imports=list(last.opset_import),
        ir_version=last.ir_version,
        producer_name=last.producer_name,
        producer_version=last.producer_version,
    )
    return model


def _export_stitched(
    module: ManyLayers,
    args: tuple[torch.Tensor, ...],
    path: str,
    input_names: list[str],
    output_names: list[str],
    exporter: str,
) -> None:
    """:func:`_torch_export`'s stand-in for a :class:`ManyLayers` ``module``: exports one middle
    and the last layer and stitches ``n_layers`` copies (:func:`_stitch` names the outputs
    ``o, final_state_0 ..``, which are the ``output_names`` the caller passes)."""
    n_layers = module.n_layers
    mid = None
    if n_layers > 1:
        _torch_export(_Block(module, False), args, path + ".mid", input_names, _MID_OUT, exporter)
        mid = onnx.load(path + ".mid")
        with torch.no_grad():
            last_args = module.next_inputs(module.delta(*args)[0])
    else:
        last_args = args
    _torch_export(
        _Block(module, True), tuple(last_args), path + ".last", input_names, ["o", "final_state"], exporter
    )
    last = onnx.load(path + ".last")
    onnx.save(_stitch(mid, last, n_layers), path)
    for p in (path + ".mid", path + ".last"):
        with contextlib.suppress(FileNotFoundError):
            os.remove(p)


@functools.cache
def _export_many_layers_cached(
    n_layers: int,
    T: int,
    exporter: str,
    B: int,
    H: int,
    K: int,
    V: int,
    gva: bool,
    seed: int,
    stitched: bool,
) -> ZooModel:
    shape = dict(B=B, T=T, H=H, HV=2 * H if gva else H, K=K, V=V)
    inputs = _make_inputs(np.random.default_rng(seed), **shape, l2norm=True)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = ManyLayers(n_layers, H, shape["HV"], K, V, l2norm=True)
    tag = (
        f"many_{exporter}_L{n_layers}_T{T}_B{B}H{H}K{K}V{V}{'_gva' if gva else ''}_s{seed}"
        f"{'_stitched' if stitched else ''}"
    )
    return _build(
        module,
        inputs,
        ["o"] + [f"final_state_{i}" for i in range(n_layers)],
        tag,
        exporter,
        export=_export_stitched if stitched else _torch_export,
        description=(
            f"{n_layers} chained HF delta-net layers (shared Linear in between), {exporter} "
            f"export{' (one exported layer stitched n times)' if stitched else ''}, "
            f"{_sizes(shape, True)}"
        ),
        expect_fused=n_layers,
        meta=_meta(
            "many_layers",
            exporter,
            shape,
            l2norm=True,
            gva=gva,
            seed=seed,
            n_layers=n_layers,
            stitched=stitched,
        ),
    )


def export_many_layers(
    tmp_dir: str | os.PathLike | None = None,
    n_layers: int = 36,
    T: int = 16,
    exporter: Exporter = "dynamo",
    *,
    B: int = 2,
    H: int = 2,
    K: int = 8,
    V: int = 8,
    gva: bool = False,
    seed: int = 0,
    stitched: bool = True,
) -> ZooModel:
    """One model with ``n_layers`` independent HF delta-net calls chained (speed test).

    ``stitched=True`` (default) exports one middle layer and the last layer with
    ``torch.onnx.export`` and chains copies of them in ONNX (same per-layer node structure,
    seconds instead of minutes). ``stitched=False`` exports the whole module in one call:
    the dynamo exporter's optimizer is superlinear in graph size (36 layers x T=16: ~700 s
    on 2 CPU cores; torchscript: ~40 s).
    """
    _check_exporter(exporter)
    if n_layers < 1:
        raise ValueError("n_layers must be >= 1")
    return _finish(
        _export_many_layers_cached(n_layers, T, exporter, B, H, K, V, bool(gva), seed, bool(stitched)),
        tmp_dir,
    )


# --------------------------------------------------------------------------- catalog


def catalog(T: int = 4) -> list[tuple[str, functools.partial]]:
    """(id, zero-argument builder) pairs covering the zoo at a small size."""
    out: list[tuple[str, functools.partial]] = []
    for exporter in EXPORTERS:
        for l2 in (False, True):
            for gva in (False, True):
                out.append(
                    (
                        f"hf-{exporter}-{'l2' if l2 else 'nol2'}-{'gva' if gva else 'mha'}",
                        functools.partial(export_hf, T=T, exporter=exporter, l2norm=l2, gva=gva),
                    )
                )
        out.append(
            (
                f"hf-{exporter}-init",
                functools.partial(export_hf, T=T, exporter=exporter, with_initial_state=True),
            )
        )
        for record in SPELLINGS:
            # hf: the grid above; hf_spelling: the same graph as the HF export without l2norm
            if record.name in ("hf", "hf_spelling") or exporter not in record.exporters:
                continue
            out.append(
                (
                    f"var-{record.name}-{exporter}",
                    functools.partial(export_variant, name=record.name, T=T, exporter=exporter),
                )
            )
        out.append(
            (
                f"many-{exporter}",
                functools.partial(export_many_layers, n_layers=3, T=T, exporter=exporter),
            )
        )
    return out
