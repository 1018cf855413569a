"""Build a Gated-DeltaNet hybrid (qwen35, qwen35moe, qwen3next) from GGUF as an unfused graph.

The graph runs one sequence of T new tokens after ``n_past`` cached ones, in the IR's ONNX op
vocabulary, with the delta net spelled out token by token as llama.cpp's unfused path does
(SPEC §3.2); the fusion pass turns each layer's chain into one ``GatedDeltaNet`` node.

Graph inputs: ``tokens`` int64 [T]; per recurrent layer l ``ssm_state.l`` [HV, K, V] and
``conv_state.l`` [kernel-1, channels]; per attention layer ``k_cache.l`` / ``v_cache.l``
[n_past, n_head_kv, head_dim]. Outputs: ``logits`` [T, n_vocab] and the same states/caches
after the T tokens (suffix ``.out``). Positions are n_past .. n_past+T-1 (RoPE and the
causal mask are constants of the graph).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gdnc.errors import ModelLoadError
from gdnc.frontends.gguf_file import GgufFile
from gdnc.frontends.graph_emit import FLOAT, INT64, Emit
from gdnc.frontends.hybrid_config import HybridConfig, hybrid_config
from gdnc.ir.graph import Model

L2NORM_EPS = 1e-6  # HF's l2norm inside the delta net


@dataclass(frozen=True)
class Composition:
    """What one graph computes: T new tokens after n_past cached ones (one sequence)."""

    n_tokens: int
    n_past: int = 0


class HybridWeights:
    """Checked access to a hybrid model's tensors (numpy order, float32)."""

    def __init__(self, f: GgufFile, cfg: HybridConfig) -> None:
        self.f, self.cfg = f, cfg
        for i in range(cfg.n_layer):  # refuse files of the wrong kind before building
            name = f"blk.{i}.attn_qkv.weight" if cfg.recurrent[i] else f"blk.{i}.attn_q.weight"
            if not f.has_tensor(name):
                raise ModelLoadError(f"{f.path}: tensor {name!r} is missing")

    def __call__(self, name: str, *shape: int) -> np.ndarray:
        return self.f.tensor(name, tuple(shape))


def _ssm_ba(e: Emit, w: HybridWeights, c: HybridConfig, h: str, i: int) -> tuple[str, str]:
    """(beta logits, alpha) [T, HV] in the file's value-head order."""
    E, H, HV = c.n_embd, c.n_k_heads, c.n_v_heads
    if c.arch == "qwen3next":  # per key head g: [b(g, 0..r-1), a(g, 0..r-1)]
        ba = e.matmul_t(h, w(f"blk.{i}.ssm_ba.weight", 2 * HV, E), f"blk.{i}.ssm_ba")
        ba = e.reshape(ba, [-1, H, 2 * (HV // H)])
        b, a = (e.reshape(e.slice(ba, 2, s, s + HV // H), [-1, HV]) for s in (0, HV // H))
        return b, a
    b = e.matmul_t(h, w(f"blk.{i}.ssm_beta.weight", HV, E), f"blk.{i}.ssm_beta")
    a = e.matmul_t(h, w(f"blk.{i}.ssm_alpha.weight", HV, E), f"blk.{i}.ssm_alpha")
    return b, a


def _repeat_heads(e: Emit, x: str, c: HybridConfig) -> str:
    """[T, H, K] -> [T, HV, K] in the value-head order of the architecture."""
    H, r, K = c.n_k_heads, c.n_v_heads // c.n_k_heads, c.k_dim
    if r == 1:
        return x
    if c.head_map == "tile":
        return e.op("Tile", x, e.const([1, r, 1]))
    x = e.op("Expand", e.unsqueeze(x, 2), e.const([1, 1, r, 1]))
    return e.reshape(x, [-1, H * r, K])


def _conv(e: Emit, w: HybridWeights, c: HybridConfig, x: str, i: int, T: int) -> tuple[str, str]:
    """Causal depthwise conv over [conv state; x] then SiLU; returns (y [T, ch], new state)."""
    C, ch = c.conv_kernel, c.conv_channels
    state = e.input(f"conv_state.{i}", FLOAT, [C - 1, ch])
    xs = e.concat([state, x], 0)
    weight = w(f"blk.{i}.ssm_conv1d.weight", ch, C)
    taps = [e.op("Mul", e.slice(xs, 0, j, j + T), e.weight(f"blk.{i}.conv_tap{j}", weight[:, j]))
            for j in range(C)]
    y = taps[0]
    for tap in taps[1:]:
        y = e.op("Add", y, tap)
    return e.silu(y), e.slice(xs, 0, T, T + C - 1)


def _delta_net(e: Emit, c: HybridConfig, q: str, k: str, v: str, g: str, beta: str, i: int,
               T: int) -> str:
    """The recurrence token by token (HF's torch_recurrent_gated_delta_rule); o [T, HV, V]."""
    HV, K, V = c.n_v_heads, c.k_dim, c.v_dim
    S = e.input(f"ssm_state.{i}", FLOAT, [HV, K, V])
    outs = []
    for t in range(T):
        q_t, k_t, v_t = (e.gather(x, t, 0) for x in (q, k, v))  # [HV, K], [HV, K], [HV, V]
        decay = e.unsqueeze(e.unsqueeze(e.op("Exp", e.gather(g, t, 0)), 1), 2)  # [HV, 1, 1]
        b_t = e.unsqueeze(e.gather(beta, t, 0), 1)  # [HV, 1]
        S = e.op("Mul", S, decay)
        k_col = e.unsqueeze(k_t, 2)  # [HV, K, 1]
        kv_mem = e.reduce("ReduceSum", e.op("Mul", S, k_col), 1, keepdims=0)  # [HV, V]
        d = e.op("Mul", e.op("Sub", v_t, kv_mem), b_t)
        S = e.op("Add", S, e.op("Mul", k_col, e.unsqueeze(d, 1)))
        o_t = e.reduce("ReduceSum", e.op("Mul", S, e.unsqueeze(q_t, 2)), 1, keepdims=0)
        outs.append(e.unsqueeze(o_t, 0))
    e.output(S, f"ssm_state.{i}.out")
    return e.concat(outs, 0)


def _recurrent_layer(e: Emit, w: HybridWeights, c: HybridConfig, h: str, i: int, T: int) -> str:
    E, H, HV, K, V = c.n_embd, c.n_k_heads, c.n_v_heads, c.k_dim, c.v_dim
    ch = c.conv_channels
    qkv = e.matmul_t(h, w(f"blk.{i}.attn_qkv.weight", ch, E), f"blk.{i}.attn_qkv")
    z = e.matmul_t(h, w(f"blk.{i}.attn_gate.weight", HV * V, E), f"blk.{i}.attn_gate")
    b, a = _ssm_ba(e, w, c, h, i)
    x, conv_state = _conv(e, w, c, qkv, i, T)
    e.output(conv_state, f"conv_state.{i}.out")
    q = e.l2_norm(e.reshape(e.slice(x, 1, 0, H * K), [-1, H, K]), L2NORM_EPS)
    k = e.l2_norm(e.reshape(e.slice(x, 1, H * K, 2 * H * K), [-1, H, K]), L2NORM_EPS)
    v = e.reshape(e.slice(x, 1, 2 * H * K, ch), [-1, HV, V])
    q = e.op("Mul", _repeat_heads(e, q, c), e.const(K ** -0.5, np.float32))
    k = _repeat_heads(e, k, c)
    dt_bias = e.weight(f"blk.{i}.ssm_dt.bias", w(f"blk.{i}.ssm_dt.bias", HV))
    ssm_a = e.weight(f"blk.{i}.ssm_a", w(f"blk.{i}.ssm_a", HV))
    g = e.op("Mul", ssm_a, e.op("Softplus", e.op("Add", a, dt_bias)))  # log decay [T, HV]
    o = _delta_net(e, c, q, k, v, g, e.op("Sigmoid", b), i, T)
    o = e.rms_norm(o, w(f"blk.{i}.ssm_norm.weight", V), c.eps, f"blk.{i}.ssm_norm")
    o = e.op("Mul", o, e.silu(e.reshape(z, [-1, HV, V])))
    return e.matmul_t(e.reshape(o, [-1, HV * V]), w(f"blk.{i}.ssm_out.weight", E, HV * V),
                      f"blk.{i}.ssm_out")


def _rope(e: Emit, x: str, c: HybridConfig, comp: Composition) -> str:
    """NeoX rotation of the first rope_dim dims of x [T, heads, head_dim]."""
    rd, T = c.rope_dim, comp.n_tokens
    inv = c.rope_base ** (-np.arange(0, rd, 2, dtype=np.float64) / rd)
    ang = np.arange(comp.n_past, comp.n_past + T, dtype=np.float64)[:, None] * inv[None, :]
    cos = e.const(np.cos(ang)[:, None, :], np.float32)  # [T, 1, rd/2]
    sin = e.const(np.sin(ang)[:, None, :], np.float32)
    x1, x2 = e.slice(x, 2, 0, rd // 2), e.slice(x, 2, rd // 2, rd)
    r1 = e.op("Sub", e.op("Mul", x1, cos), e.op("Mul", x2, sin))
    r2 = e.op("Add", e.op("Mul", x2, cos), e.op("Mul", x1, sin))
    parts = [r1, r2] + ([e.slice(x, 2, rd, c.head_dim)] if rd < c.head_dim else [])
    return e.concat(parts, 2)


def _attention_layer(e: Emit, w: HybridWeights, c: HybridConfig, h: str, i: int,
                     comp: Composition) -> str:
    E, nh, nkv, hd = c.n_embd, c.n_head, c.n_head_kv, c.head_dim
    T, n_past = comp.n_tokens, comp.n_past
    qg = e.reshape(e.matmul_t(h, w(f"blk.{i}.attn_q.weight", 2 * nh * hd, E), f"blk.{i}.attn_q"),
                   [-1, nh, 2 * hd])
    q, gate = e.slice(qg, 2, 0, hd), e.slice(qg, 2, hd, 2 * hd)
    k = e.reshape(e.matmul_t(h, w(f"blk.{i}.attn_k.weight", nkv * hd, E), f"blk.{i}.attn_k"),
                  [-1, nkv, hd])
    v = e.reshape(e.matmul_t(h, w(f"blk.{i}.attn_v.weight", nkv * hd, E), f"blk.{i}.attn_v"),
                  [-1, nkv, hd])
    q = _rope(e, e.rms_norm(q, w(f"blk.{i}.attn_q_norm.weight", hd), c.eps, f"blk.{i}.q_norm"),
              c, comp)
    k = _rope(e, e.rms_norm(k, w(f"blk.{i}.attn_k_norm.weight", hd), c.eps, f"blk.{i}.k_norm"),
              c, comp)
    caches = []
    for name, new in (("k_cache", k), ("v_cache", v)):
        past = e.input(f"{name}.{i}", FLOAT, [n_past, nkv, hd])
        full = e.op("Concat", past, new, axis=0)  # [n_past+T, nkv, hd]
        e.output(full, f"{name}.{i}.out")
        caches.append(full)
    rep = nh // nkv  # query head j reads kv head j // rep
    kf, vf = (e.reshape(e.op("Expand", e.unsqueeze(x, 2), e.const([1, 1, rep, 1])),
                        [-1, nh, hd]) for x in caches)
    scores = e.op("MatMul", e.op("Transpose", q, perm=[1, 0, 2]), e.op("Transpose", kf, perm=[1, 2, 0]))
    scores = e.op("Mul", scores, e.const(hd ** -0.5, np.float32))  # [nh, T, n_past+T]
    mask = np.where(np.arange(n_past + T)[None, :] <= n_past + np.arange(T)[:, None], 0.0, -np.inf)
    probs = e.op("Softmax", e.op("Add", scores, e.const(mask, np.float32)), axis=-1)
    o = e.op("Transpose", e.op("MatMul", probs, e.op("Transpose", vf, perm=[1, 0, 2])), perm=[1, 0, 2])
    o = e.op("Mul", o, e.op("Sigmoid", gate))
    return e.matmul_t(e.reshape(o, [-1, nh * hd]), w(f"blk.{i}.attn_output.weight", E, nh * hd),
                      f"blk.{i}.attn_output")


def _swiglu(e: Emit, x: str, gate: np.ndarray, up: np.ndarray, down: np.ndarray, name: str) -> str:
    hidden = e.op("Mul", e.silu(e.matmul_t(x, gate, f"{name}_gate")), e.matmul_t(x, up, f"{name}_up"))
    return e.matmul_t(hidden, down, f"{name}_down")


def _moe(e: Emit, w: HybridWeights, c: HybridConfig, x: str, i: int) -> str:
    """Softmax router, top-k renormalised, every expert evaluated densely, plus the shared
    expert scaled by sigmoid(gate_inp_shexp · x)."""
    E, n, ff, k = c.n_embd, c.n_expert, c.n_ff_exp, c.n_expert_used
    probs = e.op("Softmax", e.matmul_t(x, w(f"blk.{i}.ffn_gate_inp.weight", n, E),
                                       f"blk.{i}.ffn_gate_inp"), axis=-1)  # [T, n]
    top, idx = e.ops("TopK", [probs, e.const([k])], 2, axis=-1)
    top = e.op("Div", top, e.reduce("ReduceSum", top, -1))
    weights = e.op("ScatterElements", e.op("Mul", probs, e.const(0.0, np.float32)), idx, top, axis=1)
    gate = e.weight(f"blk.{i}.ffn_gate_exps", w(f"blk.{i}.ffn_gate_exps.weight", n, ff, E).transpose(0, 2, 1))
    up = e.weight(f"blk.{i}.ffn_up_exps", w(f"blk.{i}.ffn_up_exps.weight", n, ff, E).transpose(0, 2, 1))
    down = e.weight(f"blk.{i}.ffn_down_exps", w(f"blk.{i}.ffn_down_exps.weight", n, E, ff).transpose(0, 2, 1))
    hidden = e.op("Mul", e.silu(e.op("MatMul", x, gate)), e.op("MatMul", x, up))  # [n, T, ff]
    y = e.op("MatMul", hidden, down)  # [n, T, E]
    routed = e.reduce("ReduceSum", e.op("Mul", y, e.unsqueeze(e.op("Transpose", weights, perm=[1, 0]), 2)),
                      0, keepdims=0)
    sff = c.n_ff_shexp
    shared = _swiglu(e, x, w(f"blk.{i}.ffn_gate_shexp.weight", sff, E),
                     w(f"blk.{i}.ffn_up_shexp.weight", sff, E),
                     w(f"blk.{i}.ffn_down_shexp.weight", E, sff), f"blk.{i}.shexp")
    shared_gate = e.op("Sigmoid", e.matmul_t(x, w(f"blk.{i}.ffn_gate_inp_shexp.weight", 1, E),
                                              f"blk.{i}.ffn_gate_inp_shexp"))
    return e.op("Add", routed, e.op("Mul", shared, shared_gate))


def _ffn(e: Emit, w: HybridWeights, c: HybridConfig, x: str, i: int) -> str:
    if c.moe:
        return _moe(e, w, c, x, i)
    E, ff = c.n_embd, c.n_ff
    return _swiglu(e, x, w(f"blk.{i}.ffn_gate.weight", ff, E), w(f"blk.{i}.ffn_up.weight", ff, E),
                   w(f"blk.{i}.ffn_down.weight", E, ff), f"blk.{i}.ffn")


def build_unfused(f: GgufFile, comp: Composition, cfg: HybridConfig | None = None) -> Model:
    """The whole model for ``comp`` as an unfused graph (contract: module docstring)."""
    c = cfg or hybrid_config(f)
    w = HybridWeights(f, c)
    if comp.n_tokens < 1 or comp.n_past < 0:
        raise ModelLoadError(f"composition {comp} needs >= 1 new token and n_past >= 0")
    e = Emit(f"{c.arch}_T{comp.n_tokens}_past{comp.n_past}")
    tokens = e.input("tokens", INT64, [comp.n_tokens])
    x = e.op("Gather", e.weight("token_embd", w("token_embd.weight", c.n_vocab, c.n_embd)), tokens,
             axis=0)
    for i in range(c.n_layer):
        e.prefix = f"l{i}_"
        h = e.rms_norm(x, w(f"blk.{i}.attn_norm.weight", c.n_embd), c.eps, f"blk.{i}.attn_norm")
        if c.recurrent[i]:
            y = _recurrent_layer(e, w, c, h, i, comp.n_tokens)
        else:
            y = _attention_layer(e, w, c, h, i, comp)
        x = e.op("Add", x, y)
        h = e.rms_norm(x, w(f"blk.{i}.post_attention_norm.weight", c.n_embd), c.eps,
                       f"blk.{i}.post_attention_norm")
        x = e.op("Add", x, _ffn(e, w, c, h, i))
    e.prefix = ""
    x = e.rms_norm(x, w("output_norm.weight", c.n_embd), c.eps, "output_norm")
    out_w = w("output.weight", c.n_vocab, c.n_embd) if f.has_tensor("output.weight") \
        else w("token_embd.weight", c.n_vocab, c.n_embd)
    e.output(e.matmul_t(x, out_w, "output"), "logits", first=True)
    return e.model()
