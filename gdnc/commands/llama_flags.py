"""llama.cpp habits on ``gdnc run``'s command line: flags gdnc refuses, flags it ignores, ``-ngl``.

``gdnc run`` takes llama.cpp's common flags with their meaning (``-n -c -np -t -f -s --temp
--top-k --top-p --repeat-penalty``, declared in ``gdnc.cli``). Other llama.cpp flags are refused
with one line saying why, before click parses anything: unrefused, ``-fa`` would parse as ``-f a``
and ``-cnv`` as ``-c nv``. A few that ask for what gdnc always does are dropped.
"""

from __future__ import annotations

from typing import Any

from typer.core import TyperCommand

from gdnc.errors import InputError

_OFFLOAD = "gdnc runs the whole model on one --device (cpu, cuda or cuda:N)"
_SAMPLERS = "gdnc samples with --temp, --top-k, --top-p and --repeat-penalty only"
# (flags, why gdnc has no such option, what to do instead or None)
_REFUSED: list[tuple[tuple[str, ...], str, str | None]] = [
    (("-m", "--model"), "gdnc run takes the model as its first argument", "gdnc run MODEL.gguf -p TEXT"),
    (("-hf", "-hfr", "--hf-repo", "-hff", "--hf-file", "-mu", "--model-url"),
     "gdnc does not download models", "download the GGUF file and give its path"),
    (("-cnv", "--conversation", "-i", "--interactive", "-if", "--interactive-first", "-sys",
      "--system-prompt", "-st", "--single-turn", "--chat-template", "--jinja", "-r", "--reverse-prompt"),
     "gdnc run is not a chat: it continues each prompt given with -p or -f", None),
    (("--min-p", "--typical", "--mirostat", "--mirostat-lr", "--mirostat-ent", "--presence-penalty",
      "--frequency-penalty", "--dry-multiplier", "--xtc-probability", "--top-nsigma", "--dynatemp-range",
      "--samplers", "--sampling-seq", "-l", "--logit-bias"), _SAMPLERS, None),
    (("-b", "--batch-size", "-ub", "--ubatch-size"), "gdnc runs every live sequence in one batch a step",
     "to feed long prompts in parts, use --prefill-chunk N"),
    (("-fa", "--flash-attn"), "gdnc picks its attention kernels itself", None),
    (("-ctk", "--cache-type-k", "-ctv", "--cache-type-v"), "gdnc does not quantize the KV cache", None),
    (("-nkvo", "--no-kv-offload", "--mlock", "--no-mmap", "--numa"), "gdnc has no memory placement settings",
     None),
    (("-sm", "--split-mode", "-ts", "--tensor-split", "-mg", "--main-gpu", "-ot", "--override-tensor",
      "-cmoe", "--cpu-moe", "-ncmoe", "--n-cpu-moe", "-dev"), _OFFLOAD, None),
    (("-tb", "--threads-batch"), "gdnc uses one thread count", "use -t N"),
    (("-e", "--escape"), "gdnc takes prompts as given (no escape sequences)",
     "write the characters themselves (the shell's $'a\\nb'), or use -f FILE"),
    (("--color", "-co"), "gdnc colours its output on a terminal by itself", None),
    (("--grammar", "--grammar-file", "-j", "--json-schema", "-jf", "--json-schema-file"),
     "gdnc has no constrained decoding", None),
    (("--lora", "--lora-scaled", "--control-vector"), "gdnc runs the GGUF model as it is (no adapters)",
     None),
    (("--rope-scaling", "--rope-scale", "--rope-freq-base", "--rope-freq-scale", "--yarn-orig-ctx"),
     "gdnc uses the model's own RoPE settings", None),
    (("-md", "--model-draft", "--draft-max", "--draft-min", "-ngld", "-ps", "--p-split"),
     "gdnc has no speculative decoding", None),
    (("--keep",), "gdnc does not shift the context: a sequence stops when its context is full", None),
    (("-sp", "--special"), "gdnc does not print special tokens", "--json lists every generated token id"),
    (("--no-display-prompt", "--log-disable"), "gdnc has no such switch",
     "-q prints only the generated text"),
]
REFUSED: dict[str, tuple[str, str | None]] = {
    flag: (why, fix) for flags, why, fix in _REFUSED for flag in flags}
# llama.cpp flags that ask for what gdnc run always does: dropped
IGNORED = frozenset({"-no-cnv", "--no-conversation", "-cb", "--cont-batching", "--no-escape"})


def screen(args: list[str], value_options: set[str]) -> list[str]:
    """``args`` without the IGNORED flags; InputError at the first REFUSED one. Values of the
    options in ``value_options`` (``-p -fa`` is the prompt "-fa") and everything after ``--``
    are left alone."""
    kept: list[str] = []
    value_next = False
    for i, arg in enumerate(args):
        if arg == "--" and not value_next:
            return kept + args[i:]
        flag = arg.split("=", 1)[0] if arg.startswith("--") else arg
        if not value_next and flag in REFUSED:
            why, fix = REFUSED[flag]
            raise InputError(f"{flag} is a llama.cpp option gdnc does not have: {why}", fix=fix)
        if value_next or flag not in IGNORED:
            kept.append(arg)
        value_next = not value_next and arg in value_options
    return kept


class LlamaHabits(TyperCommand):
    """A typer command whose arguments go through ``screen`` before click parses them."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        value_options = {name for p in self.params if p.param_type_name == "option"
                         and not getattr(p, "is_flag", False) and not getattr(p, "count", False)
                         for name in p.opts}
        return super().parse_args(ctx, screen(args, value_options))


def device_for(device: str | None, gpu_layers: str | None) -> str:
    """The device of ``--device`` and llama.cpp's ``-ngl N``: N = 0 is the CPU; N > 0 and "all"
    a CUDA device (gdnc puts every layer there); "auto" CUDA when there is one. InputError when
    they disagree, or for ``-ngl`` asking for a GPU on a machine without one."""
    if gpu_layers is None:
        return device or "cpu"
    if gpu_layers not in ("all", "auto") and not gpu_layers.isdigit():
        raise InputError(f"-ngl: {gpu_layers!r} is not a layer count, 'all' or 'auto'")
    import torch

    cuda = torch.cuda.is_available()
    wants = cuda if gpu_layers == "auto" else gpu_layers == "all" or int(gpu_layers) > 0
    picked = "cuda" if wants else "cpu"
    if device is not None and device.split(":")[0] != picked:
        raise InputError(f"-ngl {gpu_layers} asks for {'a GPU' if wants else 'the CPU'} but --device is "
                         f"{device}", fix="give one of them")
    if wants and not cuda:
        raise InputError(f"-ngl {gpu_layers}: this machine has no CUDA device",
                         fix="drop -ngl (gdnc runs on the CPU by default)")
    return device or picked
