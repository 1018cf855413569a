"""A GGUF model's weights, bound to its graphs' weight inputs as the file holds them.

A family's graphs declare each tensor of the file they read as a graph input named as in the
file (no data: the graphs and the passes over them are weight-free). ``GgufWeights`` gives
those inputs values when an executor is made: a tensor read only by ``ai.gdnc::Linear`` /
``Embed`` nodes (``gdnc.passes.packed_weights``) stays in the file's type (F16, Q8_0, Q4_K ...:
``PackedWeight``, on the CPU a view of the memory map, nothing copied); any other (norms, conv
kernels, gates) is read as float32 (F32 tensors on the CPU: a view too). Each tensor is bound
once per device, whatever number of graphs read it, so a GPU receives every weight once.
"""

from __future__ import annotations

import torch

from gdnc.frontends.gguf_file import GgufFile
from gdnc.ir.graph import Graph, Model
from gdnc.lowering.quant.packed import PackedWeight
from gdnc.opset.packed_weights import DOMAIN, EMBED, LINEAR
from gdnc.passes.packed_weights import pack_weight_reads

# the ai.gdnc op and input position that read a weight as the file holds it
_PACKED_READS = {LINEAR: 1, EMBED: 0}


def weight_inputs(f: GgufFile, graph: Graph) -> list[str]:
    """The graph inputs that are tensors of ``f``."""
    return [name for name in graph.inputs if f.has_tensor(name)]


def _packed_only(graph: Graph, name: str) -> bool:
    readers = [graph.node(n) for n in graph.consumers(name)]
    return bool(readers) and all(
        r.domain == DOMAIN and _PACKED_READS.get(r.op_type, -1) < len(r.inputs)
        and r.inputs[_PACKED_READS[r.op_type]] == name for r in readers)


class GgufWeights:
    """The tensors of ``f`` on ``device``, bound on demand and kept."""

    def __init__(self, f: GgufFile, device: torch.device) -> None:
        self.f, self.device = f, device
        self._packed: dict[str, PackedWeight] = {}
        self._dense: dict[str, torch.Tensor] = {}

    def packed(self, name: str) -> PackedWeight:
        if name not in self._packed:
            raw, qtype, shape = self.f.raw(name)
            self._packed[name] = PackedWeight.from_buffer(raw, qtype, shape).to(self.device)
        return self._packed[name]

    def dense(self, name: str) -> torch.Tensor:
        if name not in self._dense:
            self._dense[name] = self.packed(name).dense() if name in self._packed else \
                PackedWeight.from_buffer(*self.f.raw(name)).dense().to(self.device)
        return self._dense[name]

    def prepare(self, model: Model) -> dict[str, object]:
        """Rewrite ``model``'s weight reads for packed weights (``pack_weight_reads``) and return
        the values of its weight inputs, for ``Executor(..., bound=...)``."""
        g = model.graph
        names = weight_inputs(self.f, g)
        pack_weight_reads(model, names)
        return {n: self.packed(n) if _packed_only(g, n) else self.dense(n) for n in names}

    def unbound_bytes(self) -> int:
        """Bytes of the file's tensors not bound on the device yet (what binding them all will
        still take: on the CPU, the memory map's pages)."""
        return sum(self.f.tensor_nbytes(n) for n in self.f.tensor_names()
                   if n not in self._packed and n not in self._dense)

    @property
    def nbytes(self) -> int:
        """Bytes bound on the device (a packed weight and its float32 copy both count)."""
        return sum(w.nbytes for w in self._packed.values()) + \
            sum(t.numel() * t.element_size() for t in self._dense.values())

