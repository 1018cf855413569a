"""Contract of the two ``ai.gdnc`` ops that read a weight as the model file holds it.

- ``Linear(x, W)``: ``x @ W^T``, W [out, in] -> [..., out]; W [n, out, in] (a stack of
  matrices) -> as ``MatMul(x, Transpose(W, perm=[0, 2, 1]))``: [n, T, out]. The standard
  spelling it replaces is exactly that ``MatMul(x, Transpose(W))``.
- ``Embed(W, ids)``: rows ``ids`` (int64, any shape) of W [rows, cols] -> [*ids.shape, cols],
  as ``Gather(W, ids, axis=0)``.

W is a graph input that the runtime binds to the file's bytes (F16, Q8_0, Q4_K, ...; see
``gdnc.lowering.quant``), or any float tensor; x and the results are float32.
"""

from __future__ import annotations

DOMAIN = "ai.gdnc"
LINEAR = "Linear"
EMBED = "Embed"
