"""``gdnc bench``: fused vs unfused GatedDeltaNet, model level and op level, side by side.

``options`` (what to measure), ``timing`` (clocks, copy bandwidth, device), ``results`` (the
measured rows), ``model_level`` (a GGUF model's decode and prefill, fused vs unfused graphs),
``op_inputs``/``unfused_chain``/``peers``/``op_level`` (the op at the model's GDN shapes: gdnc's
kernel, the unfused per-token chain, onnxruntime and fla where installed), ``tables``/``plot``
(output), ``command`` (the whole run, as the CLI calls it).
"""
