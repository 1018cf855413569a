"""``gdnc convert MODEL -o OUT``: an ONNX model fused and written with ``--target``'s nodes; a
GGUF hybrid written as ONNX with external weights, fused or unfused (``gguf_export``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from gdnc import progress
from gdnc.atomic import keeping, write_json, writes_in_place
from gdnc.commands import command_files
from gdnc.commands.conversion_report import print_report
from gdnc.errors import InputError
from gdnc.frontends.model_kind import GGUF, model_kind
from gdnc.frontends.onnx_model import load_onnx
from gdnc.ir.graph import Model
from gdnc.ir.to_onnx import save_onnx
from gdnc.passes.convert import convert_model
from gdnc.passes.pipeline import STAGES, ConversionReport


def convert(model: Path, *, output: Path, target: str, report: Path | None, dump_after: str | None,
            as_json: bool, quiet: bool, unfused: bool, lengths: str | None, out: Console,
            err: Console) -> None:
    """The command, its options as typed; MODEL's kind (``model_kind``) picks the branch."""
    dump_file = _dump_file(dump_after, output)
    dump = _dump_after(dump_after, dump_file)  # an unknown stage: refused before any work
    command_files.check(models=[model], outputs=[output, report, dump_file])
    if model_kind(model) == GGUF:
        from gdnc.commands.gguf_export import DEFAULT_LENGTHS, export_gguf, parse_lengths

        if lengths is not None and not unfused:
            raise InputError("--lengths needs --unfused (the fused graph serves every batch)")
        if dump_after is not None:
            raise InputError("--dump-after applies to ONNX input only, not to GGUF")
        comp = parse_lengths(lengths) if lengths is not None else DEFAULT_LENGTHS
        with progress.bars(err, enabled=not quiet and not as_json):
            info = export_gguf(model, output, unfused=unfused, lengths=comp, target=target)
        if report is not None:
            write_json(report, info)
        if as_json:
            out.print_json(json.dumps(info))
        elif not quiet:
            kind = f"unfused, batch {info['composition']}" if unfused else f"fused, target {target}"
            out.print(f"{info['architecture']} ({kind}): {info['nodes']} nodes, "
                      f"{info['gated_delta_net_nodes']} GatedDeltaNet")
            out.print(f"wrote {output} (weights in {info['external_data']})")
        return
    if unfused or lengths is not None:
        raise InputError("--unfused and --lengths apply to GGUF input (MODEL.gguf) only")
    with progress.bars(err, enabled=not quiet and not as_json):
        rep = convert_file(model, output, target=target, report_path=report, dump_after=dump)
    if as_json:
        out.print_json(json.dumps(rep.to_json()))
    elif not quiet:
        print_report(out, rep)
        out.print(f"wrote {output}")


def convert_file(
    src: str | Path, dst: str | Path, *, target: str = "native", report_path: str | Path | None = None,
    dump_after: Callable[[str, Model], None] | None = None,
) -> ConversionReport:
    """Read ``src`` (ONNX), fuse, write ``dst`` atomically (and the JSON report if asked; each
    file on its own). ``dst`` and the report may not be ``src`` or one of its external data
    files (``command_files.check``), and no write removes one of those."""
    inputs = command_files.check(models=[src], outputs=[dst, report_path])
    with keeping(inputs):
        model = load_onnx(src)
        report = convert_model(model, target=target, dump_after=dump_after)
        save_onnx(model, dst, external_data=model.external_data)
        if report_path is not None:
            write_json(report_path, report.to_json())
    return report


def _dump_after(stage: str | None, path: Path | None) -> Callable[[str, Model], None] | None:
    """``--dump-after STAGE``: the callback that writes the graph after that stage to ``path``."""
    if stage is None or path is None:  # both or neither
        return None
    names = [name for name, _ in STAGES]
    if stage not in names:
        raise InputError(f"--dump-after: there is no stage {stage!r}; the stages are {', '.join(names)}")

    def dump(name: str, model: Model) -> None:
        if name == stage:
            save_onnx(model, path)
    return dump


def _dump_file(stage: str | None, output: Path) -> Path | None:
    """Where ``--dump-after STAGE`` writes: beside the output (in the working folder if that
    is a stream, such as /dev/stdout)."""
    if stage is None:
        return None
    return (Path(".") if writes_in_place(output) else output.parent) / f"after-{stage}.onnx"

