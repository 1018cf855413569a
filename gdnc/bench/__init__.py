"""What ``gdnc bench`` measures: fused vs unfused GatedDeltaNet, model level and op level.

``options`` (what to measure), ``timing`` (clocks, copy bandwidth, device), ``results`` (the
measured rows), ``plan`` (jobs over a shared context), ``run`` (one run: plan, then measure),
``model_level`` (a GGUF model's decode and prefill, fused vs unfused graphs),
``op_inputs``/``unfused_chain``/``peers``/``op_level`` (the op at the model's GDN shapes: gdnc's
kernel, the unfused per-token chain, onnxruntime and fla where installed). The command, its
tables and its plot: ``gdnc.commands.bench``, ``bench_tables``, ``bench_plot``.
"""
