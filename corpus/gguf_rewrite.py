"""Test helper: copy a GGUF file through the ``gguf`` package's writer with edits."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import quantize


def rewrite(src: str | Path, dst: str | Path, *, arch: str | None = None,
            tensors: Mapping[str, np.ndarray] | None = None, drop: tuple[str, ...] = (),
            qtype: GGMLQuantizationType | None = None, strings: Mapping[str, str] | None = None,
            values: Mapping[str, object] | None = None) -> Path:
    """Write ``dst``: ``src`` with the architecture renamed (keys re-prefixed), tensors replaced
    (numpy order; names not in ``src`` are appended) or dropped, every 2-D weight quantized
    to ``qtype`` when given, string keys ``strings`` set (replaced or added), and existing keys
    given new ``values`` of their own type (a list for an array)."""
    reader = GGUFReader(src)
    old_arch = str(reader.fields["general.architecture"].contents())
    new_arch = arch or old_arch
    writer = GGUFWriter(dst, new_arch)
    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        key = new_arch + name[len(old_arch):] if name.startswith(old_arch + ".") else name
        vtype = field.types[0]
        sub = field.types[1] if vtype == GGUFValueType.ARRAY else None
        if key not in (strings or {}):
            writer.add_key_value(key, (values or {}).get(key, field.contents()), vtype, sub)
    for key, text in (strings or {}).items():
        writer.add_string(key, text)
    added = [(name, data) for name, data in (tensors or {}).items()
             if name not in {t.name for t in reader.tensors}]
    for name, raw in [(t.name, t.data) for t in reader.tensors] + added:
        if name in drop:
            continue
        data = np.asarray((tensors or {}).get(name, raw), dtype=np.float32)
        if qtype is not None and data.ndim >= 2 and data.shape[-1] % GGML_QUANT_SIZES[qtype][0] == 0:
            writer.add_tensor(name, quantize(data, qtype), raw_dtype=qtype)
        else:
            writer.add_tensor(name, data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)
