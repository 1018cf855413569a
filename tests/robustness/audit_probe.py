"""Run gdnc commands in-process under a Python audit hook and report what they did.

``python -m tests.robustness.audit_probe PLAN.json`` reads ``{"warmup": [[args...], ...],
"armed": [[args...], ...]}``, runs the warm-up commands (so every lazy import has happened),
then installs an audit hook and runs the armed commands, and prints one JSON object:
``{"events": [[event, detail], ...], "exits": [code, ...]}`` with every armed-phase event
that could run code from a file (pickle, marshal, exec/compile, imports, ctypes), reach the
network (socket, urllib, http), start a process, or read a file (open, listdir, scandir).
A probe process is its own: audit hooks cannot be removed once installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import sys

WATCHED = ("pickle.find_class", "marshal.loads", "marshal.load", "exec", "compile", "import",
           "ctypes.dlopen", "ctypes.dlsym", "urllib.Request", "http.client.connect", "subprocess.Popen",
           "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "open", "os.listdir",
           "os.scandir", "shutil.rmtree")


def _detail(event: str, args: tuple) -> str:
    if event == "import":
        return str(args[0])
    if event in ("exec", "compile"):
        code = args[0]
        what = code[:80] if isinstance(code, (str, bytes)) else getattr(code, "co_name", "?")
        return f"{what!r} from {_caller()}"
    return str(args[0]) if args else ""


def _caller() -> str:
    """The innermost frame outside the standard library: who asked for the code."""
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    frame = sys._getframe(3)  # _caller, _detail, the hook, then the frame raising the event
    while frame is not None and frame.f_code.co_filename.startswith((stdlib, "<")):
        frame = frame.f_back
    return "?" if frame is None else f"{frame.f_code.co_filename}:{frame.f_lineno}"


def _run(args: list[str]) -> int:
    from gdnc import cli

    sys.argv = ["gdnc", *args]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            cli.main()
        except SystemExit as exc:
            return exc.code if isinstance(exc.code, int) else 1
    return 0


def main() -> None:
    with open(sys.argv[1]) as fh:
        plan = json.load(fh)
    for args in plan["warmup"]:
        _run(args)
    events: list[list[str]] = []
    armed = [False]

    def hook(event: str, args: tuple) -> None:
        if armed[0] and (event in WATCHED or event.startswith("socket.")):
            events.append([event, _detail(event, args)])

    sys.addaudithook(hook)
    armed[0] = True
    exits = [_run(args) for args in plan["armed"]]
    armed[0] = False
    print(json.dumps({"events": events, "exits": exits}))


if __name__ == "__main__":
    main()
