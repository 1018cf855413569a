"""Render benchmarks/RESULTS.md from the JSON the benchmarks write.

Inputs: ``results_gpu.json`` (``bench_gpu.py --check --decode --prefill --mixed --breakeven``,
run on the GPU machine, copied here), ``results_cpu.json`` (``bench_cpu.py``) and
``results_generate_{cpu,cuda}.json`` (``bench_generate.py``, renamed from its output). Every ratio
in the file compares figures of one run on one machine.

Usage: python benchmarks/report.py
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path

from gdnc.atomic import write_text

HERE = Path(__file__).resolve().parent
Row = dict


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def cell(x: object) -> str:
        if isinstance(x, float):
            return f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
        return str(x)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def columns(rows: Sequence[Row], spec: Sequence[tuple[str, Callable[[Row], object]]]) -> str:
    return table([name for name, _ in spec], [[fn(r) for _, fn in spec] for r in rows])


def gpu_section(g: dict) -> str:
    dev, bw = g["device"], g["copy_bw_GBs"]
    decode, prefill, mixed, be = g["decode"], g["prefill"], g["mixed"], g["breakeven"]
    big = [r for r in decode if r["B"] >= 128]
    b1 = decode[0]
    out = [
        "## GPU",
        f"Device: **{dev['name']}** ({dev['sms']} SMs, {dev['l2_bytes'] >> 20} MiB L2), torch "
        f"{dev['torch']}, Triton 3.6, fla-core 0.6.0; {dev['date']}. Copy bandwidth (1 GiB "
        f"device-to-device, bytes read + written): **{bw:.0f} GB/s**.",
        "",
        "Shapes: H = 16, HV = 32 (interleaved GVA), K = V = 128, bf16 q/k/v, fp32 g and beta, "
        "**fp32 state**, q/k l2-norm in the kernel, fresh random inputs. Reproduce: "
        "`python3 benchmarks/bench_gpu.py --check --decode --prefill --mixed --breakeven`.",
        "",
        "### Decode (T = 1), B sequences",
        "floor: state bytes read + written at the copy bandwidth. graph: GPU µs per call in a "
        "CUDA graph of calls rotating over inputs that overflow L2 (L2 flushed per replay). "
        "eager: wall µs per call of the kernel entry `run(launch)` (host included). api: wall "
        "µs per call of the public `gdnc.gated_delta_net` (validation included) with "
        "cu_seqlens/slots on the GPU (`api`) or on the host (`api host`). replay1: wall µs of "
        "one captured call (`DecodeGraph.replay()`; fla: its call captured alone).",
        "",
        columns(decode, [
            ("B", lambda r: r["B"]), ("floor", lambda r: r["floor_us"]),
            ("gdnc kv graph", lambda r: r["gdnc_kv_graph"]),
            ("%bw", lambda r: r["gdnc_kv_bw_pct"]),
            ("fla graph", lambda r: r["fla_graph"]), ("fla %bw", lambda r: r["fla_bw_pct"]),
            ("gdnc vk graph", lambda r: r["gdnc_vk_graph"]),
            ("%bw", lambda r: r["gdnc_vk_bw_pct"]),
            ("fla v-first", lambda r: r["fla_vfirst_graph"]),
            ("fla %bw", lambda r: r["fla_vfirst_bw_pct"]),
            ("gdnc eager", lambda r: r["gdnc_kv_eager"]), ("gdnc api", lambda r: r["gdnc_kv_api"]),
            ("api host", lambda r: r["gdnc_kv_api_host_idx"]),
            ("gdnc replay1", lambda r: r["gdnc_kv_replay1"]),
            ("fla eager", lambda r: r["fla_eager"]), ("fla replay1", lambda r: r["fla_replay1"]),
        ]),
        "",
        f"B ≥ 128: gdnc {min(r['gdnc_kv_bw_pct'] for r in big):.0f}–"
        f"{max(r['gdnc_vk_bw_pct'] for r in big):.0f} % of copy bandwidth, fla "
        f"{min(r['fla_bw_pct'] for r in big):.0f}–{max(r['fla_vfirst_bw_pct'] for r in big):.0f} %."
        f" B = 1: {b1['gdnc_kv_graph']:.1f} µs on the GPU; host included "
        f"{b1['gdnc_kv_replay1']:.1f} µs through `DecodeGraph`, {b1['gdnc_kv_eager']:.1f} µs "
        f"through `run(launch)`, {b1['gdnc_kv_api_host_idx']:.0f} / {b1['gdnc_kv_api']:.0f} µs "
        "through the validating public call (host / GPU index tensors; fla's public call "
        f"{b1['fla_eager']:.0f} µs). Host figures move by ±10 µs between rows: the host is a VM.",
        "",
        "### Prefill, one sequence of T tokens (GPU µs per call, do_bench)",
        columns(prefill, [
            ("T", lambda r: r["T"]), ("gdnc chunked", lambda r: r["gdnc_chunked_us"]),
            ("Mtok/s", lambda r: r["gdnc_chunked_Mtok_s"]),
            ("fla chunk", lambda r: r["fla_chunk_us"]), ("Mtok/s", lambda r: r["fla_chunk_Mtok_s"]),
            ("gdnc / fla time", lambda r: r["gdnc_chunked_us"] / r["fla_chunk_us"]),
        ]),
        "",
        "fla's call is host-bound below 16K tokens here (its time is flat near 1.2 ms); above, "
        "its kernels run ~1.6× faster than gdnc's chunked kernels.",
        "",
        "### Mixed batch: 64 decodes + 4 prefills of 1024 tokens, one packed call",
        "Wall µs per call, host included. gdnc: one `gated_delta_net` call (auto: one "
        "recurrent + one chunked launch); fla: `chunk_gated_delta_rule` over all 68 sequences "
        "with cu_seqlens, or split (fused recurrent for the decodes + chunk for the prefills).",
        "",
        table(["gdnc (GPU cu_seqlens)", "gdnc (host cu_seqlens)", "fla chunk, all", "fla split"],
              [[mixed["gdnc_api_us"], mixed["gdnc_api_host_cu_us"], mixed["fla_chunk_all_us"],
                mixed["fla_split_us"]]]),
        "",
        "### Recurrent vs chunked, B = 32 sequences of T tokens (GPU µs per call)",
        columns(be, [("T", lambda r: r["T"]), ("recurrent kv", lambda r: r["recurrent_us"]),
                     ("recurrent vk", lambda r: r["recurrent_vk_us"]),
                     ("chunked", lambda r: r["chunked_us"])]),
        "",
        "Break-even between 24 and 32 tokens per sequence: `BACKENDS[\"triton\"].chunked_min_tokens = 32`.",
        "",
        "### Spot checks on the GPU (relative L2 error vs the fp64 reference unless named)",
        ", ".join(f"{k} {v:.1e}" for k, v in g["check"].items()) + ".",
    ]
    return "\n".join(out)


def ms(r: Row, name: str) -> float:
    return r[name]["median_ms"] if name in r else float("nan")


def cpu_section(c: dict) -> str:
    m = c["machine"]
    dec, pre, be = c["decode"], c["prefill"], c["break_even"]
    flops = m.get("matmul_GFLOPs")
    out = [
        "## CPU",
        f"Machine: {m['cpu']}, {m['threads']} threads, torch {m['torch']}, onnxruntime "
        f"{m['onnxruntime']}; copy bandwidth {m['copy_bandwidth_GBps']:.1f} GB/s"
        + (f", fp32 matmul {flops:.0f} GFLOP/s" if flops else "") + ". Shapes: HV = H = 32, "
        "K = V = 128, fp32, state \"kv\". Milliseconds per call (median). ort-la: onnxruntime's "
        "`com.microsoft::LinearAttention` (gated_delta); ort-unfused: the HF per-token loop "
        "exported by torch.onnx (TorchScript) run by onnxruntime. Reproduce: "
        "`python benchmarks/bench_cpu.py`.",
        "",
        "### Decode (T = 1), B sequences",
        columns(dec, [
            ("B", lambda r: r["B"]), ("gdnc", lambda r: ms(r, "gdnc-rec")),
            ("ort-la", lambda r: ms(r, "ort-la")), ("ort-unfused", lambda r: ms(r, "ort-unfused")),
            ("ort-la / gdnc", lambda r: ms(r, "ort-la") / ms(r, "gdnc-rec")),
            ("unfused / gdnc", lambda r: ms(r, "ort-unfused") / ms(r, "gdnc-rec")),
            ("gdnc %bw", lambda r: r["gdnc_pct_copy_bw"]), ("ort-la %bw", lambda r: r["ort_la_pct_copy_bw"]),
        ]),
        "",
        "### Prefill, one sequence of T tokens",
        columns(pre, [
            ("T", lambda r: r["T"]), ("gdnc recurrent", lambda r: ms(r, "gdnc-rec")),
            ("gdnc chunked", lambda r: ms(r, "gdnc-chunk")), ("ort-la", lambda r: ms(r, "ort-la")),
            ("ort-unfused", lambda r: ms(r, "ort-unfused")),
            ("ort-la / gdnc best", lambda r: ms(r, "ort-la") / min(ms(r, "gdnc-rec"),
                                                                  ms(r, "gdnc-chunk"))),
        ]),
        "",
        f"Break-even (one sequence): chunked from T = {be['chunked_min_tokens']} "
        "(`BACKENDS[\"cpu\"].chunked_min_tokens`).",
    ]
    return "\n".join(out)


def generate_section(runs: Sequence[dict]) -> str:
    """Tokens/s of the example GGUF models, fused vs unfused graphs (bench_generate.py)."""
    out = ["## GGUF models end to end: tokens/s, fused vs unfused graphs", "",
           "The example models of `examples/make_gguf_models.py` (hidden 64, 4 layers 3:1, F32): "
           "one batch prefilling B prompts of P tokens, then N − 1 greedy decode steps of all B "
           "together; best of 3, graphs built and warmed up first. Models this small are bound by "
           "per-op overhead, not by memory (weights ≈ 1 MB), so % of copy bandwidth says nothing "
           "here; the ratio fused / unfused measured in the same run is the figure. Reproduce: "
           "`PYTHONPATH=. python3 benchmarks/bench_generate.py [--device cuda]`.", "",
           "Reading: prefill gains most (the unfused graph runs ~20 ops per token, sequence and "
           "layer). At decode with B = 1 an unfused layer is one step, so both graphs are a few "
           "hundred ops and run alike; with B = 4 the fused graph stays the same size while the "
           "unfused one grows per sequence. On the GPU every figure is host-bound (one kernel "
           "launch per op, ≈ 7–15 ms per decode batch for these 64-wide models), which is why "
           "it trails the CPU here; the kernels themselves are in the GPU section above."]
    spec = [
        ("model", lambda r: r["model"].removesuffix(".gguf")), ("B", lambda r: r["batch"]),
        ("prefill fused tok/s", lambda r: r["fused_prefill_tok_s"]),
        ("unfused", lambda r: r["unfused_prefill_tok_s"]), ("×", lambda r: r["prefill_speedup"]),
        ("decode fused tok/s", lambda r: r["fused_decode_tok_s"]),
        ("unfused", lambda r: r["unfused_decode_tok_s"]), ("×", lambda r: r["decode_speedup"]),
        ("nodes fused / unfused", lambda r: f"{r['fused_nodes']} / {r['unfused_nodes']}"),
        ("same tokens", lambda r: "yes" if r["same_tokens"] else "NO"),
    ]
    for run in runs:
        rows = run["rows"]
        out += ["", f"### {run['device']} (P = {rows[0]['prompt']}, N = {rows[0]['new']})", "",
                columns(rows, spec)]
    return "\n".join(out)


TARGETS = [  # (issue target, how far)
    ("GPU decode ≥ 85 % of copy bandwidth at B ≥ 128", "met (table above)"),
    ("GPU decode ≤ 15 µs per call at B = 1, host included",
     "met through `DecodeGraph.replay()`; not through the validating public call (one "
     "read-back and one upload per call)"),
    ("GPU prefill ≥ fla's chunk kernel at T ≥ 8K",
     "met at 8K (fla host-bound there); not at 16K–32K (~0.6× fla's speed)"),
    ("CPU decode ≥ 2× onnxruntime LinearAttention",
     "not met (ratio in the table): gdnc's torch ops make 5 passes over the state per token "
     "where a fused loop makes 2; 2× onnxruntime would need ≥ 85 % of the copy bandwidth at "
     "B = 1 (onnxruntime is at ~45 %)"),
    ("CPU prefill (T = 256) ≥ 3× onnxruntime LinearAttention",
     "not met (ratio in the table), and below this machine's floor: the recurrence needs "
     "≥ 7·K·V flops per token and head (0.94 GFLOP at T = 256, 6.6 ms at the measured matmul "
     "rate), onnxruntime takes ~9 ms, 3× would be ~3 ms"),
]


def main() -> None:
    gpu = json.loads((HERE / "results_gpu.json").read_text())
    cpu = json.loads((HERE / "results_cpu.json").read_text())
    generate = [json.loads((HERE / f"results_generate_{d}.json").read_text()) for d in ("cpu", "cuda")
                if (HERE / f"results_generate_{d}.json").exists()]
    text = "\n\n".join([
        "# gdnc benchmark results\n\nGenerated by `benchmarks/report.py` from "
        "`results_gpu.json` and `results_cpu.json`. GatedDeltaNet kernels side by side with "
        "their peers, each table from one run on one machine.",
        gpu_section(gpu), cpu_section(cpu), generate_section(generate),
        "## Issue targets: how far\n\n" + table(["target", "status"], TARGETS),
    ])
    write_text(HERE / "RESULTS.md", text.rstrip() + "\n")
    print(f"wrote {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
