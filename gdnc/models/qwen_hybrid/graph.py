"""Build a Gated-DeltaNet hybrid (qwen35, qwen35moe, qwen3next) from GGUF as an unfused graph.

One graph runs one *batch*: N sequences with T_n new tokens each, packed in order (T tokens in
all), every sequence reading and writing its own slot of the state pools. The graph is in the
IR's ONNX op vocabulary with the delta net spelled out token by token and sequence by
sequence, as llama.cpp's unfused path does (SPEC §3.2): sequence n reads its state row
``Gather(pool, state_slots[n])``, runs one step per token on rows ``cu[n] + t`` of the packed
q/k/v/g/beta, and scatters its final state back (``ScatterND``). The fusion pass turns each
layer's N chains into ONE multi-sequence ``GatedDeltaNet`` node.

Only the delta-net chains depend on the composition (the lengths T_n); every other part reads
the batch layout from index inputs that the runtime computes (as llama.cpp's graph inputs
do), so a fused graph serves every composition once ``gdnc.passes.composition`` has turned
its ``cu_seqlens`` constant into an input.

Attention runs per sequence over the keys of its own slot only (padded to [N, Lq, S]), so a
non-finite value in one sequence's cache never reaches another's softmax. Query j of sequence n
sees cache position s when s <= its position: the graph derives that bool mask [N, 1, Lq, S]
from ``positions`` (no mask input), and the runtime bounds Lq x S per batch by feeding long
prompts in chunks (``gdnc.runtime.batch_plan``).

Inputs (P pool slots, C conv kernel, n_ctx cache positions per slot):

====================  ==========================  ==========================================
name                  shape / dtype               meaning
====================  ==========================  ==========================================
tokens                [T] int64                   token ids, packed by sequence
positions             [T] int64                   position of each token in its sequence
state_slots           [N] int64                   pool slot of each sequence (read + write)
conv_rows             [T, C] int64                rows of [conv rows of the batch (N*(C-1));
                                                  the T new inputs] under each token's window
conv_state_rows       [N, C-1] int64              the same rows forming each new conv state
kv_write              [T, 2] int64                (slot, position) receiving each token's k/v
q_rows                [N, Lq] int64               token row of sequence n's j-th query (Lq =
                                                  the longest T_n; padding repeats a row of n)
kv_read               [N, S] int64                flat cache rows slot*n_ctx + position of n's
                                                  keys (S = most keys; padding: n's position 0)
o_rows                [T] int64                   row n*Lq + j of the [N*Lq] attention output
                                                  holding each token
logit_rows            [O] int64                   the token rows whose logits are wanted
ssm_state.l           [P, HV, K, V] float32       recurrent layer l's delta-net states
conv_state.l          [P, C-1, channels] float32  its conv states
k_cache.l, v_cache.l  [P, n_ctx, n_kv, hd]        attention layer l's KV cache
====================  ==========================  ==========================================

Outputs: ``logits`` [O, n_vocab], then every pool after the batch (name + ``.out``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdnc import progress
from gdnc.errors import ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Model, Value
from gdnc.models.qwen_hybrid.config import HybridConfig, hybrid_config
from gdnc.opset.gated_delta_net import L2NORM_EPS  # HF's l2norm inside the delta net

# the batch inputs and the symbol of their leading dim (per token, per sequence, other)
BATCH_INPUTS = {"tokens": "T", "positions": "T", "state_slots": "N", "conv_rows": "T",
                "conv_state_rows": "N", "kv_write": "T", "q_rows": "N", "kv_read": "N",
                "o_rows": "T", "logit_rows": "O"}


@dataclass(frozen=True)
class Composition:
    """The new-token counts of the sequences of one batch, in packing order."""

    lengths: tuple[int, ...]

    @classmethod
    def of(cls, *lengths: int) -> Composition:
        return cls(tuple(int(n) for n in lengths))

    @property
    def n_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def cu_seqlens(self) -> list[int]:
        return [0, *np.cumsum(self.lengths).tolist()]


class HybridWeights:
    """The model's tensors as typed graph inputs named as in the file (``blk.0.attn_qkv.weight``
    [out, in], numpy order): declared once each, their shape and type checked against the
    file, nothing read. ``bind_weights`` gives them values when an executor is made."""

    def __init__(self, f: GgufFile, cfg: HybridConfig, e: GraphBuilder) -> None:
        self.f, self.cfg, self.e = f, cfg, e
        for i in range(cfg.n_layer):  # refuse files of the wrong kind before building
            name = f"blk.{i}.attn_qkv.weight" if cfg.recurrent[i] else f"blk.{i}.attn_q.weight"
            if not f.has_tensor(name) and not (cfg.recurrent[i] and f.has_tensor(f"blk.{i}.ssm_in.weight")):
                raise ModelLoadError(f"{f.path}: tensor {name!r} is missing")

    def __call__(self, name: str, *shape: int) -> str:
        if name not in self.e.graph.values:
            self.f.check_tensor(name, tuple(shape))
            self.e.input(name, FLOAT, list(shape))
        return name


def _qkv_z(e: GraphBuilder, w: HybridWeights, c: HybridConfig, h: str, i: int) -> tuple[str, str]:
    """The q|k|v projection [T, channels] and the z projection [T, HV*V] of layer i.

    Older qwen3next files hold both in ``ssm_in`` [2*H*K + 2*HV*V, E], rows grouped per key
    head g as [q_g (K), k_g (K), v_g (r*V), z_g (r*V)] (r = HV/H): one projection, then its
    columns regrouped; newer ones split them into ``attn_qkv`` (all q, all k, all v) and
    ``attn_gate``."""
    E, H, HV, K, V = c.n_embd, c.n_k_heads, c.n_v_heads, c.k_dim, c.v_dim
    if not w.f.has_tensor(f"blk.{i}.ssm_in.weight"):
        return (e.linear(h, w(f"blk.{i}.attn_qkv.weight", c.conv_channels, E)),
                e.linear(h, w(f"blk.{i}.attn_gate.weight", HV * V, E)))
    r = HV // H
    both = e.linear(h, w(f"blk.{i}.ssm_in.weight", 2 * H * K + 2 * HV * V, E))
    grouped = np.arange(2 * H * K + 2 * HV * V).reshape(H, 2 * K + 2 * r * V)
    q, k, v, z = np.split(grouped, [K, 2 * K, 2 * K + r * V], axis=1)
    qkv = np.concatenate([q.reshape(-1), k.reshape(-1), v.reshape(-1)])
    return (e.op("Gather", both, e.const(qkv), axis=1),
            e.op("Gather", both, e.const(z.reshape(-1)), axis=1))


def _ssm_ba(e: GraphBuilder, w: HybridWeights, c: HybridConfig, h: str, i: int) -> tuple[str, str]:
    """(beta logits, alpha) [T, HV] in the file's value-head order."""
    E, H, HV = c.n_embd, c.n_k_heads, c.n_v_heads
    if c.arch == "qwen3next":  # per key head g: [b(g, 0..r-1), a(g, 0..r-1)]
        ba = e.linear(h, w(f"blk.{i}.ssm_ba.weight", 2 * HV, E))
        ba = e.reshape(ba, [-1, H, 2 * (HV // H)])
        b, a = (e.reshape(e.slice(ba, 2, s, s + HV // H), [-1, HV]) for s in (0, HV // H))
        return b, a
    b = e.linear(h, w(f"blk.{i}.ssm_beta.weight", HV, E))
    a = e.linear(h, w(f"blk.{i}.ssm_alpha.weight", HV, E))
    return b, a


def _repeat_heads(e: GraphBuilder, x: str, c: HybridConfig) -> str:
    """[T, H, K] -> [T, HV, K] in the value-head order of the architecture."""
    H, r, K = c.n_k_heads, c.n_v_heads // c.n_k_heads, c.k_dim
    if r == 1:
        return x
    if c.head_map == "tile":
        return e.op("Tile", x, e.const([1, r, 1]))
    x = e.op("Expand", e.unsqueeze(x, 2), e.const([1, 1, r, 1]))
    return e.reshape(x, [-1, H * r, K])


def _conv(e: GraphBuilder, w: HybridWeights, c: HybridConfig, x: str, i: int) -> str:
    """Causal depthwise conv of x [T, ch] over each sequence's [conv state; new inputs], then
    SiLU; the new conv states are scattered back into the pool."""
    C, ch = c.conv_kernel, c.conv_channels
    pool = e.input(f"conv_state.{i}", FLOAT, ["P", C - 1, ch])
    slots = "state_slots"
    rows = e.reshape(e.op("Gather", pool, slots, axis=0), [-1, ch])  # [N*(C-1), ch]
    xs = e.concat([rows, x], 0)
    windows = e.op("Gather", xs, "conv_rows", axis=0)  # [T, C, ch]
    weight = e.op("Transpose", w(f"blk.{i}.ssm_conv1d.weight", ch, C), perm=[1, 0])  # [C, ch]
    y = e.reduce("ReduceSum", e.op("Mul", windows, weight), 1, keepdims=0)
    new_state = e.op("Gather", xs, "conv_state_rows", axis=0)  # [N, C-1, ch]
    e.output(e.op("ScatterND", pool, e.unsqueeze(slots, 1), new_state), f"conv_state.{i}.out")
    return e.silu(y)


def delta_net_layer(e: GraphBuilder, c: HybridConfig, fields: tuple[str, ...], i: int,
                    comp: Composition) -> str:
    """HF's torch_recurrent_gated_delta_rule per sequence and token on rows of the packed
    (q, k, v, g, beta); o [T, HV, V]."""
    HV, K, V = c.n_v_heads, c.k_dim, c.v_dim
    pool = e.input(f"ssm_state.{i}", FLOAT, ["P", HV, K, V])
    written, outs = pool, []
    for n, (start, length) in enumerate(zip(comp.cu_seqlens, comp.lengths)):
        slot = e.gather("state_slots", n, 0)
        S = e.op("Gather", pool, slot, axis=0)  # [HV, K, V]
        for r in range(start, start + length):
            q_t, k_t, v_t, g_t, b_t = (e.gather(x, r, 0) for x in fields)
            decay = e.unsqueeze(e.unsqueeze(e.op("Exp", g_t), 1), 2)  # [HV, 1, 1]
            S = e.op("Mul", S, decay)
            k_col = e.unsqueeze(k_t, 2)  # [HV, K, 1]
            kv_mem = e.reduce("ReduceSum", e.op("Mul", S, k_col), 1, keepdims=0)  # [HV, V]
            d = e.op("Mul", e.op("Sub", v_t, kv_mem), e.unsqueeze(b_t, 1))
            S = e.op("Add", S, e.op("Mul", k_col, e.unsqueeze(d, 1)))
            o_t = e.reduce("ReduceSum", e.op("Mul", S, e.unsqueeze(q_t, 2)), 1, keepdims=0)
            outs.append(e.unsqueeze(o_t, 0))
        written = e.op("ScatterND", written, e.reshape(slot, [1, 1]), e.unsqueeze(S, 0))
    e.output(written, f"ssm_state.{i}.out")
    return e.concat(outs, 0)


def _recurrent_layer(e: GraphBuilder, w: HybridWeights, c: HybridConfig, h: str, i: int,
                     comp: Composition) -> str:
    E, H, HV, K, V = c.n_embd, c.n_k_heads, c.n_v_heads, c.k_dim, c.v_dim
    ch = c.conv_channels
    qkv, z = _qkv_z(e, w, c, h, i)
    b, a = _ssm_ba(e, w, c, h, i)
    x = _conv(e, w, c, qkv, i)
    q = e.l2_norm(e.reshape(e.slice(x, 1, 0, H * K), [-1, H, K]), L2NORM_EPS)
    k = e.l2_norm(e.reshape(e.slice(x, 1, H * K, 2 * H * K), [-1, H, K]), L2NORM_EPS)
    v = e.reshape(e.slice(x, 1, 2 * H * K, ch), [-1, HV, V])
    q = e.op("Mul", _repeat_heads(e, q, c), e.const(K ** -0.5, np.float32))
    k = _repeat_heads(e, k, c)
    dt_bias, ssm_a = w(f"blk.{i}.ssm_dt.bias", HV), w(f"blk.{i}.ssm_a", HV)
    g = e.op("Mul", ssm_a, e.op("Softplus", e.op("Add", a, dt_bias)))  # log decay [T, HV]
    o = delta_net_layer(e, c, (q, k, v, g, e.op("Sigmoid", b)), i, comp)
    o = e.rms_norm(o, w(f"blk.{i}.ssm_norm.weight", V), c.eps, f"blk.{i}.ssm_norm")
    o = e.op("Mul", o, e.silu(e.reshape(z, [-1, HV, V])))
    return e.linear(e.reshape(o, [-1, HV * V]), w(f"blk.{i}.ssm_out.weight", E, HV * V))


def _rope(e: GraphBuilder, x: str, c: HybridConfig, angles: tuple[str, str]) -> str:
    """NeoX rotation of the first rope_dim dims of x [T, heads, head_dim]."""
    rd = c.rope_dim
    cos, sin = angles  # [T, 1, rd/2]
    x1, x2 = e.slice(x, 2, 0, rd // 2), e.slice(x, 2, rd // 2, rd)
    r1 = e.op("Sub", e.op("Mul", x1, cos), e.op("Mul", x2, sin))
    r2 = e.op("Add", e.op("Mul", x2, cos), e.op("Mul", x1, sin))
    parts = [r1, r2] + ([e.slice(x, 2, rd, c.head_dim)] if rd < c.head_dim else [])
    return e.concat(parts, 2)


def _rope_angles(e: GraphBuilder, c: HybridConfig) -> tuple[str, str]:
    """cos and sin [T, 1, rope_dim/2] of ``positions`` (fp32, as llama.cpp and HF)."""
    rd = c.rope_dim
    inv = (c.rope_base ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)).astype(np.float32)
    pos = e.unsqueeze(e.op("Cast", "positions", to=FLOAT), 1)  # [T, 1]
    ang = e.unsqueeze(e.op("Mul", pos, e.const(inv, np.float32)), 1)
    return e.op("Cos", ang), e.op("Sin", ang)


def _hidden_keys(e: GraphBuilder) -> str:
    """bool [N, 1, Lq, S]: key s is after query j of sequence n (its position is larger). The key
    positions 0..S-1 are an exclusive CumSum of ones as long as a row of ``kv_read``, not a
    Range over its Shape: no shape is read as a value, so a step on a GPU reads nothing back to
    the host (a CUDA graph can capture it)."""
    q_pos = e.op("Gather", "positions", "q_rows", axis=0)  # [N, Lq]
    ones = e.op("Add", e.op("Mul", e.gather("kv_read", 0, 0), e.const(0)), e.const(1))  # [S]
    key_pos = e.op("CumSum", ones, e.const(0), exclusive=1)  # [S]: 0, 1, ..., S-1
    return e.op("Less", e.unsqueeze(e.unsqueeze(q_pos, 1), 3), key_pos)


def _attention_layer(e: GraphBuilder, w: HybridWeights, c: HybridConfig, h: str, i: int,
                     angles: tuple[str, str], hidden: str) -> str:
    E, nh, nkv, hd = c.n_embd, c.n_head, c.n_head_kv, c.head_dim
    qg = e.reshape(e.linear(h, w(f"blk.{i}.attn_q.weight", 2 * nh * hd, E)), [-1, nh, 2 * hd])
    q, gate = e.slice(qg, 2, 0, hd), e.slice(qg, 2, hd, 2 * hd)
    k = e.reshape(e.linear(h, w(f"blk.{i}.attn_k.weight", nkv * hd, E)), [-1, nkv, hd])
    v = e.reshape(e.linear(h, w(f"blk.{i}.attn_v.weight", nkv * hd, E)), [-1, nkv, hd])
    q = _rope(e, e.rms_norm(q, w(f"blk.{i}.attn_q_norm.weight", hd), c.eps, f"blk.{i}.q_norm"),
              c, angles)
    k = _rope(e, e.rms_norm(k, w(f"blk.{i}.attn_k_norm.weight", hd), c.eps, f"blk.{i}.k_norm"),
              c, angles)
    keys = []
    for name, new in (("k_cache", k), ("v_cache", v)):
        pool = e.input(f"{name}.{i}", FLOAT, ["P", "n_ctx", nkv, hd])
        full = e.op("ScatterND", pool, "kv_write", new)  # [P, n_ctx, nkv, hd]
        e.output(full, f"{name}.{i}.out")
        keys.append(e.op("Gather", e.reshape(full, [-1, nkv, hd]), "kv_read", axis=0))  # [N, S, nkv, hd]
    rep = nh // nkv  # query head j reads kv head j // rep
    kf, vf = (e.reshape(e.op("Expand", e.unsqueeze(x, 3), e.const([1, 1, 1, rep, 1])),
                        [0, 0, nh, hd]) for x in keys)  # [N, S, nh, hd]
    qb = e.op("Transpose", e.op("Gather", q, "q_rows", axis=0), perm=[0, 2, 1, 3])  # [N, nh, Lq, hd]
    scores = e.op("MatMul", qb, e.op("Transpose", kf, perm=[0, 2, 3, 1]))
    scores = e.op("Mul", scores, e.const(hd ** -0.5, np.float32))  # [N, nh, Lq, S]
    probs = e.op("Softmax", e.op("Where", hidden, e.const(-np.inf, np.float32), scores), axis=-1)
    o = e.op("MatMul", probs, e.op("Transpose", vf, perm=[0, 2, 1, 3]))  # [N, nh, Lq, hd]
    o = e.op("Reshape", e.op("Transpose", o, perm=[0, 2, 1, 3]), e.const([-1, nh, hd]))
    o = e.op("Mul", e.op("Gather", o, "o_rows", axis=0), e.op("Sigmoid", gate))  # [T, nh, hd]
    return e.linear(e.reshape(o, [-1, nh * hd]), w(f"blk.{i}.attn_output.weight", E, nh * hd))


def _swiglu(e: GraphBuilder, x: str, gate: str, up: str, down: str) -> str:
    hidden = e.op("Mul", e.silu(e.linear(x, gate)), e.linear(x, up))
    return e.linear(hidden, down)


def _moe(e: GraphBuilder, w: HybridWeights, c: HybridConfig, x: str, i: int) -> str:
    """Softmax router, top-k renormalised, every expert evaluated densely, plus the shared
    expert scaled by sigmoid(gate_inp_shexp · x)."""
    E, n, ff, k = c.n_embd, c.n_expert, c.n_ff_exp, c.n_expert_used
    probs = e.op("Softmax", e.linear(x, w(f"blk.{i}.ffn_gate_inp.weight", n, E)), axis=-1)  # [T, n]
    top, idx = e.ops("TopK", [probs, e.const([k])], 2, axis=-1)
    top = e.op("Div", top, e.reduce("ReduceSum", top, -1))
    weights = e.op("ScatterElements", e.op("Mul", probs, e.const(0.0, np.float32)), idx, top, axis=1)
    gate = e.linear(x, w(f"blk.{i}.ffn_gate_exps.weight", n, ff, E), rank=3)  # [n, T, ff]
    up = e.linear(x, w(f"blk.{i}.ffn_up_exps.weight", n, ff, E), rank=3)
    hidden = e.op("Mul", e.silu(gate), up)
    y = e.linear(hidden, w(f"blk.{i}.ffn_down_exps.weight", n, E, ff), rank=3)  # [n, T, E]
    routed = e.reduce("ReduceSum", e.op("Mul", y, e.unsqueeze(e.op("Transpose", weights, perm=[1, 0]), 2)),
                      0, keepdims=0)
    sff = c.n_ff_shexp
    shared = _swiglu(e, x, w(f"blk.{i}.ffn_gate_shexp.weight", sff, E),
                     w(f"blk.{i}.ffn_up_shexp.weight", sff, E), w(f"blk.{i}.ffn_down_shexp.weight", E, sff))
    shared_gate = e.op("Sigmoid", e.linear(x, w(f"blk.{i}.ffn_gate_inp_shexp.weight", 1, E)))
    return e.op("Add", routed, e.op("Mul", shared, shared_gate))


def _ffn(e: GraphBuilder, w: HybridWeights, c: HybridConfig, x: str, i: int) -> str:
    if c.moe:
        return _moe(e, w, c, x, i)
    E, ff = c.n_embd, c.n_ff
    return _swiglu(e, x, w(f"blk.{i}.ffn_gate.weight", ff, E), w(f"blk.{i}.ffn_up.weight", ff, E),
                   w(f"blk.{i}.ffn_down.weight", E, ff))


def _batch_inputs(e: GraphBuilder, c: HybridConfig, comp: Composition) -> None:
    T, N, C = comp.n_tokens, len(comp.lengths), c.conv_kernel
    shapes: dict[str, list[int | str]] = {
        "tokens": [T], "positions": [T], "state_slots": [N], "conv_rows": [T, C],
        "conv_state_rows": [N, C - 1], "kv_write": [T, 2], "q_rows": [N, "Lq"], "kv_read": [N, "S"],
        "o_rows": [T], "logit_rows": ["O"],
    }
    for name in BATCH_INPUTS:
        e.input(name, INT64, shapes[name])


def build_unfused(f: GgufFile, comp: Composition, cfg: HybridConfig | None = None) -> Model:
    """The whole model for one batch ``comp`` as an unfused graph (contract: module docstring)."""
    c = cfg or hybrid_config(f)
    if not comp.lengths or min(comp.lengths) < 1:
        raise ModelLoadError(f"composition {list(comp.lengths)} needs >= 1 sequence of >= 1 token")
    e = GraphBuilder.new(f"{c.arch}_" + "_".join(map(str, comp.lengths)))
    w = HybridWeights(f, c, e)
    _batch_inputs(e, c, comp)
    x = e.op("Gather", w("token_embd.weight", c.n_vocab, c.n_embd), "tokens", axis=0)
    angles, hidden = (_rope_angles(e, c), _hidden_keys(e)) if not all(c.recurrent) else (("", ""), "")
    for i in progress.track(range(c.n_layer), f"building graph: {len(comp.lengths)} sequence(s), "
                                                 f"{comp.n_tokens} tokens"):
        e.prefix = f"l{i}_"
        h = e.rms_norm(x, w(f"blk.{i}.attn_norm.weight", c.n_embd), c.eps, f"blk.{i}.attn_norm")
        if c.recurrent[i]:
            y = _recurrent_layer(e, w, c, h, i, comp)
        else:
            y = _attention_layer(e, w, c, h, i, angles, hidden)
        x = e.op("Add", x, y)
        h = e.rms_norm(x, w(f"blk.{i}.post_attention_norm.weight", c.n_embd), c.eps,
                       f"blk.{i}.post_attention_norm")
        x = e.op("Add", x, _ffn(e, w, c, h, i))
    e.prefix = ""
    x = e.op("Gather", x, "logit_rows", axis=0)
    x = e.rms_norm(x, w("output_norm.weight", c.n_embd), c.eps, "output_norm")
    out_w = w("output.weight", c.n_vocab, c.n_embd) if f.has_tensor("output.weight") \
        else w("token_embd.weight", c.n_vocab, c.n_embd)
    e.output(e.linear(x, out_w), "logits", first=True)
    model = e.model()
    g = model.graph
    g.values["logits"] = Value("logits", FLOAT, ("O", c.n_vocab))
    for name in g.outputs[1:]:  # every pool after the batch: typed as the pool
        pool = g.values[name.removesuffix(".out")]
        g.values[name] = Value(name, pool.dtype, pool.shape)
    return model
