"""The ``gdnc`` commands, one module per command (``convert``, ``inspect``, ``run``, ``compare``,
``bench``, ``ops``, ``logits``): each has a function ``gdnc.cli`` calls with the parsed options
and its consoles; it recognises MODEL (``gdnc.frontends.model_kind``), checks the files
(``gdnc.commands.command_files``), calls the library and prints. Beside them, what one command alone
uses: ``gguf_export`` (convert, inspect), ``generate`` (run), ``onnx_compare``, ``gguf_compare``,
``heldout`` and ``compare_report`` (compare), ``conversion_report`` (convert, inspect),
``bench_tables`` and ``bench_plot`` (bench; the measuring is ``gdnc.bench``), ``options``
(option values several commands share).
"""
