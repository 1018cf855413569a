"""The unfused per-token delta-net chain, as the unfused graph of a GGUF model spells it
(``models.qwen_hybrid.graph.delta_net_layer``: per sequence a Gather of its state row, a dozen small ops per
token, a ScatterND back), alone in a graph and run by gdnc's executor: what the fusion pass
replaces by one GatedDeltaNet node."""

from __future__ import annotations

from dataclasses import replace

import torch

from gdnc.bench.op_inputs import OpInputs
from gdnc.ir.builder import FLOAT, INT64, GraphBuilder
from gdnc.ir.graph import Model
from gdnc.models.qwen_hybrid.config import HybridConfig
from gdnc.models.qwen_hybrid.graph import Composition, delta_net_layer
from gdnc.runtime.executor import Executor

POOL = "ssm_state.0"
FIELDS = ("q", "k", "v", "g", "beta")


def chain_model(cfg: HybridConfig, x: OpInputs) -> Model:
    """Inputs q, k, v, g, beta, state_slots and the pool ``POOL``; outputs o [B*T, HV, V] and
    the pool after the batch (``POOL.out``)."""
    s = x.shape
    c = replace(cfg, n_v_heads=s.HV, k_dim=s.K, v_dim=s.V)
    e = GraphBuilder.new(f"delta_net_chain_{x.batch}x{x.tokens}")
    n = x.batch * x.tokens
    for name, shape in zip(FIELDS, ([n, s.HV, s.K], [n, s.HV, s.K], [n, s.HV, s.V], [n, s.HV], [n, s.HV])):
        e.input(name, FLOAT, shape)
    e.input("state_slots", INT64, [x.batch])
    o = delta_net_layer(e, c, FIELDS, 0, Composition((x.tokens,) * x.batch))
    e.output(o, "o", first=True)
    return e.model()


class UnfusedChain:
    """``chain(i)``: one run of the chain on pool i % copies of ``x`` (updated, as a model's
    pools are: the executor may write the pool in place, the updated pool replaces it); its o
    becomes ``x.o``, as the fused call writes it there."""

    def __init__(self, cfg: HybridConfig, x: OpInputs) -> None:
        self.x = x
        self.executor = Executor(chain_model(cfg, x), x.device, donate=[POOL])
        self.feeds = {**dict(zip(FIELDS, x.packed)), "state_slots": torch.arange(x.batch)}

    def __call__(self, i: int) -> None:
        c = i % self.x.copies
        outs = self.executor.run({**self.feeds, POOL: self.x.pools[c]})
        self.x.pools[c], self.x.o = outs[f"{POOL}.out"], outs["o"]
