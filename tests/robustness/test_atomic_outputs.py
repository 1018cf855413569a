"""Whenever gdnc stops writing, its outputs are the previous files or the new ones, complete.

First ``gdnc.atomic`` and ``save_onnx`` on their own (exceptions, KeyboardInterrupt, SIGINT,
SIGTERM and SIGHUP during the commit, write errors as one line, the previous data file removed
unless an input uses it). Then as a user meets it: a real ``python -m gdnc convert`` (ONNX ->
ONNX, and GGUF -> ONNX with external data) over a previous output of another model, killed by
SIGKILL or SIGINT at moments spread over its lifetime, and by those and SIGTERM and SIGHUP at
chosen moments of its writing through ``slow_writer.py``: mid-write, just before and just after
the model's rename. After each kill the folder holds the old output byte for byte (data file
included), or the new one equal to a reference conversion (or none, if there was none before):
never a model that fails to load. No visible stray file, except after SIGKILL a data file no
model refers to (killed between the data file's rename and the model's, or before the old data
file is removed); hidden temporary files after SIGKILL only. SIGINT exits 130 with the one line
"interrupted", SIGTERM and SIGHUP 143 and 129 with "terminated". Each kill is a case of the
"atomic" tally: old output intact, new output complete, or broken.

The kill points of ``-m slow`` are many more (12 moments per signal, SIGTERM and SIGHUP spread
too, more mid-write points, kills without a previous output).
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

from corpus.tiny_gguf import write_models
from gdnc import atomic
from gdnc.atomic import Replacement, keeping, open_replacing, write_json, write_text
from gdnc.commands.gguf_export import export_gguf
from gdnc.errors import GdncError, InputError
from gdnc.frontends.onnx_model import load_onnx
from gdnc.interrupt import LINES, STOP_SIGNALS
from gdnc.ir import to_onnx
from gdnc.ir.to_onnx import external_data_files, model_to_proto, save_onnx
from tests.robustness.harness import TALLY, run_cli
from tests.robustness.slow_writer import PAUSE

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "hf_recurrent_gated_delta_rule_t16.onnx"
SLOW_WRITER = Path(__file__).with_name("slow_writer.py")
TEMP = re.compile(r"\..+\.[0-9a-f]{8}\.tmp")
SUITE = "atomic"


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def _data_name(model: str) -> re.Pattern[str]:
    return re.compile(re.escape(model) + r"\.[0-9a-f]{8}\.data")


def _canonical(path: Path) -> bytes:
    """The model at ``path``, data loaded, as bytes: equal for equal models whatever the data
    file is called. Loads it with onnx (the checker too) and with gdnc's frontend."""
    onnx.checker.check_model(str(path))
    onnx.load(str(path))
    return model_to_proto(load_onnx(path)).SerializeToString()


# ------------------------------------------------------------------ gdnc.atomic on its own

@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_an_exception_keeps_the_old_file_and_removes_the_temp(tmp_path, exc):
    out = tmp_path / "r.json"
    out.write_text("old")
    with pytest.raises(type(exc)), open_replacing(out) as fh:
        fh.write("half of the new")
        fh.flush()
        (temp,) = [n for n in _names(tmp_path) if n != out.name]
        assert TEMP.fullmatch(temp) and temp.startswith(".r.json.")
        raise exc
    assert out.read_text() == "old" and _names(tmp_path) == ["r.json"]


def test_success_replaces_the_file_with_umask_permissions(tmp_path):
    out = tmp_path / "r.json"
    out.write_text("old")
    out.chmod(0o600)
    write_json(out, {"a": [1, 2]})
    assert json.loads(out.read_text()) == {"a": [1, 2]} and out.read_text().endswith("}\n")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o666 & ~umask
    assert _names(tmp_path) == ["r.json"]


@pytest.mark.parametrize("sig", STOP_SIGNALS, ids=lambda sig: signal.Signals(sig).name)
def test_a_stop_signal_during_the_commit_is_raised_after_it(tmp_path, monkeypatch, sig):
    def stop(signum, frame):  # what gdnc's command line does (interrupt.recording)
        raise KeyboardInterrupt

    out = tmp_path / "o.txt"
    out.write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        os.kill(os.getpid(), sig)
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    previous = signal.signal(sig, stop)
    try:
        with pytest.raises(KeyboardInterrupt):
            write_text(out, "new")
        assert signal.getsignal(sig) is stop
    finally:
        signal.signal(sig, previous)
    assert out.read_text() == "new" and _names(tmp_path) == ["o.txt"]


def test_new_files_go_again_if_the_target_cannot_be_renamed(tmp_path, monkeypatch):
    out, data = tmp_path / "m.onnx", tmp_path / "m.onnx.0123abcd.data"
    out.write_text("old")
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == out:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_replace(src, dst)

    monkeypatch.setattr(atomic.os, "replace", replace)
    with pytest.raises(GdncError) as exc, Replacement(out, new_files=[data]) as rep:
        rep.temp(data).write_text("data")
        rep.temp(out).write_text("new")
    assert str(exc.value) == f"cannot write {out}: Input/output error"
    assert out.read_text() == "old" and _names(tmp_path) == ["m.onnx"]


@pytest.mark.parametrize("problem", ["directory", "no folder", "permission denied", "disk full"])
def test_write_errors_are_one_line_and_leave_nothing(tmp_path, monkeypatch, problem):
    out = tmp_path / "out.npy"
    if problem == "directory":
        out.mkdir()
    elif problem == "no folder":
        out = tmp_path / "missing" / "out.npy"
    elif problem == "permission denied":  # as root, a read-only folder would not refuse
        def refuse(path):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
        monkeypatch.setattr(atomic, "_create_temp", refuse)
    before = _names(tmp_path)
    with pytest.raises(GdncError) as exc, open_replacing(out, "wb") as fh:
        fh.write(b"\x93NUMPY")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    expected = {"directory": "it is a directory", "no folder": f"no folder {out.parent}",
                "permission denied": "Permission denied", "disk full": "No space left on device"}
    assert str(exc.value) == f"cannot write {out}: {expected[problem]}"
    assert _names(tmp_path) == before


# ------------------------------------------------------------------ save_onnx

@pytest.fixture(scope="module")
def two_models():
    """Two different IR models: the example and the example with one initializer changed."""
    a, b = load_onnx(EXAMPLE), load_onnx(EXAMPLE)
    tensor = max(b.graph.initializers.values(), key=lambda t: len(t.raw_data))
    tensor.raw_data = bytes([tensor.raw_data[0] ^ 1]) + tensor.raw_data[1:]
    assert model_to_proto(a).SerializeToString() != model_to_proto(b).SerializeToString()
    return a, b


def test_save_onnx_overwrite_removes_the_previous_data_file(tmp_path, two_models):
    a, b = two_models
    path = tmp_path / "m.onnx"
    save_onnx(a, path, external_data=True)
    (data_a,) = external_data_files(path)
    assert _data_name("m.onnx").fullmatch(data_a.name) and _names(tmp_path) == ["m.onnx", data_a.name]
    save_onnx(b, path, external_data=True)
    (data_b,) = external_data_files(path)
    assert data_b != data_a and _names(tmp_path) == ["m.onnx", data_b.name]
    assert _canonical(path) == model_to_proto(b).SerializeToString()
    save_onnx(a, path, external_data=False)  # inline over external: the data file goes too
    assert _names(tmp_path) == ["m.onnx"] and _canonical(path) == model_to_proto(a).SerializeToString()


def test_save_onnx_removes_only_its_own_data_files(tmp_path, two_models):
    a, b = two_models
    path = tmp_path / "m.onnx"
    onnx.save_model(model_to_proto(a), str(path), save_as_external_data=True, location="m.onnx.data")
    stray = tmp_path / "m.onnx.0badf00d.data"  # our naming, but no model refers to it
    stray.write_bytes(b"x")
    save_onnx(b, path, external_data=True)
    (data,) = external_data_files(path)
    assert _names(tmp_path) == sorted(["m.onnx", "m.onnx.data", stray.name, data.name])
    assert _canonical(path) == model_to_proto(b).SerializeToString()


def test_save_onnx_keeps_and_never_writes_over_what_an_input_uses(tmp_path, two_models):
    a, b = two_models
    path, backup, link = tmp_path / "m.onnx", tmp_path / "backup.onnx", tmp_path / "link.data"
    save_onnx(a, path, external_data=True)
    (data,) = external_data_files(path)
    shutil.copy(path, backup)  # a copy, with the same data file: the input of the run
    os.link(data, link)
    with keeping([backup, data]):
        with pytest.raises(InputError) as exc:
            save_onnx(b, link, external_data=False)
        save_onnx(b, path, external_data=True)  # the old output's data file is the input's
    assert str(exc.value) == f"{link}: the output would overwrite the input {data}"
    (new,) = external_data_files(path)
    assert _names(tmp_path) == sorted(["m.onnx", "backup.onnx", "link.data", data.name, new.name])
    link.unlink()  # onnx's checker refuses a data file with hard links
    assert _canonical(backup) == model_to_proto(a).SerializeToString()
    assert _canonical(path) == model_to_proto(b).SerializeToString()
    save_onnx(a, path, external_data=True)  # the block is over: the data file of b's goes
    assert new.name not in _names(tmp_path)


@pytest.mark.parametrize("exc", [OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)), KeyboardInterrupt()],
                         ids=["disk-full", "ctrl-c"])
def test_save_onnx_interrupted_mid_write_leaves_the_old_model(tmp_path, two_models, monkeypatch, exc):
    a, b = two_models
    path = tmp_path / "m.onnx"
    save_onnx(a, path, external_data=True)
    old = {n: (tmp_path / n).read_bytes() for n in _names(tmp_path)}

    def half_written(proto, file, location):
        file.write_bytes(b"\0" * 100)
        raise exc

    monkeypatch.setattr(to_onnx, "_write_external", half_written)
    with pytest.raises(GdncError if isinstance(exc, OSError) else KeyboardInterrupt) as raised:
        save_onnx(b, path, external_data=True)
    if isinstance(exc, OSError):
        assert str(raised.value) == f"cannot write {path}: No space left on device"
    assert {n: (tmp_path / n).read_bytes() for n in _names(tmp_path)} == old


# ------------------------------------------------------------------ CLI write errors

def _cli_error(args: list[str]) -> str:
    outcome = run_cli([str(a) for a in args])
    assert outcome.code == 1 and len(outcome.error_lines) == 1, outcome.stderr
    assert outcome.error_lines[0].startswith("error: ") and "Traceback" not in outcome.stderr
    return outcome.error_lines[0]


def test_cli_output_errors_are_one_line_before_any_work(tmp_path):
    src = tmp_path / "in.onnx"
    shutil.copy(EXAMPLE, src)
    ext = tmp_path / "ext.onnx"
    save_onnx(load_onnx(EXAMPLE), ext, external_data=True)
    (ext_data,) = external_data_files(ext)
    before = _names(tmp_path)
    missing = tmp_path / "missing" / "o.onnx"
    assert f"no folder {missing.parent}" in _cli_error(["convert", src, "-o", missing])
    assert "it is a directory" in _cli_error(["convert", src, "-o", tmp_path])
    assert "would overwrite the input" in _cli_error(["convert", src, "-o", src])
    assert "would overwrite the external data" in _cli_error(["convert", ext, "-o", ext_data])
    assert "no folder" in _cli_error(["convert", src, "-o", tmp_path / "o.onnx", "--report", missing])
    assert _names(tmp_path) == before
    assert load_onnx(ext).external_data  # the input and its data file as they were


def test_cli_ctrl_c_is_exit_130_and_one_line(monkeypatch, tmp_path):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("gdnc.commands.convert.convert_file", interrupted)
    outcome = run_cli(["convert", str(EXAMPLE), "-o", str(tmp_path / "o.onnx")])
    assert (outcome.code, outcome.error_lines) == (130, ["interrupted"]), outcome.stderr


# ------------------------------------------------------------------ killing real conversions

@dataclass(frozen=True)
class Kill:
    """One kill: ``sig`` at ``at`` x the conversion's duration, or (``mode``: a slow_writer mode)
    ``at`` seconds after slow_writer's marker; ``expect``: the state it must leave, if known."""

    sig: signal.Signals
    at: float = 0.0
    mode: str | None = None
    previous: bool = True
    expect: str | None = None

    def __str__(self) -> str:
        where = self.mode + (f"+{self.at:.2f}s" if self.at else "") if self.mode else f"{self.at:.2f}"
        return f"{self.sig.name}@{where}" + ("" if self.previous else "-no-previous")


@dataclass
class Source:
    """A conversion to kill: its input, the previous output and the reference one."""

    model: Path  # what is converted
    old: dict[str, bytes]  # the previous output's files (model and data file) by name
    reference: bytes  # _canonical of a complete conversion
    seconds: float  # how long a complete conversion takes, start to exit

    def args(self, out: Path) -> list[str]:
        return ["convert", str(self.model), "-o", str(out), "-q"]


def _gdnc(args: list[str], marker: Path | None = None, mode: str | None = None) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "GDNC_DEBUG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    cmd = ["-m", "gdnc"] if mode is None else [str(SLOW_WRITER), str(marker), mode]
    return subprocess.Popen([sys.executable, *cmd, *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """``sources(name)``: the "onnx" (the example) or "gguf" (a tiny qwen35) conversion, built
    once. The previous output is another model: the GGUF one unfused, with its data file."""
    base = tmp_path_factory.mktemp("atomic_kills")
    gguf = write_models(base / "gguf", ["qwen35"], variants=("f32",))[0]
    (base / "old").mkdir()
    export_gguf(gguf, base / "old" / "out.onnx", unfused=True, lengths=(3,))
    old = {n: (base / "old" / n).read_bytes() for n in _names(base / "old")}
    old_model = _canonical(base / "old" / "out.onnx")
    built: dict[str, Source] = {}

    def get(name: str) -> Source:
        if name not in built:
            folder = base / f"reference_{name}"
            folder.mkdir()
            source = Source(EXAMPLE if name == "onnx" else gguf, old, b"", 0.0)
            start = time.perf_counter()
            proc = _gdnc(source.args(folder / "out.onnx"))
            _, stderr = proc.communicate(timeout=300)
            assert proc.returncode == 0, stderr
            source.seconds = time.perf_counter() - start
            source.reference = _canonical(folder / "out.onnx")
            assert source.reference != old_model
            built[name] = source
        return built[name]

    return get


def _wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        assert proc.poll() is None, f"finished before slow_writer's moment: {proc.communicate()}"
        assert time.monotonic() < deadline, "slow_writer's moment never came"
        time.sleep(0.002)


def _state(out: Path, source: Source, kill: Kill) -> str:
    """"old", "new", "absent" or what is wrong with the output."""
    folder = out.parent
    if not out.exists():
        return "output gone" if kill.previous else "absent"
    if kill.previous and all((folder / n).is_file() and (folder / n).read_bytes() == b
                             for n, b in source.old.items()):
        return "old"
    try:
        model = _canonical(out)
    except Exception as exc:  # noqa: BLE001 - any failure to load is the finding
        return f"output does not load: {type(exc).__name__}: {str(exc)[:200]}"
    return "new" if model == source.reference else "output is neither the old nor the new model"


def _exit_problems(kill: Kill, state: str, code: int, stderr: str) -> list[str]:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 0:
        return [] if state == "new" else ["exit 0 without the new output"]
    if kill.sig == signal.SIGKILL:
        return [] if code == -signal.SIGKILL else [f"exit {code} after SIGKILL: {stderr[-300:]!r}"]
    # -SIGINT too: once a KeyboardInterrupt has come through exec() of a string (as in
    # dataclasses, while torch is imported), CPython ends by re-raising SIGINT, handled or not;
    # a shell sees 130 either way (SIGTERM and SIGHUP raise a subclass, which it lets be)
    codes = (128 + kill.sig, -signal.SIGINT) if kill.sig == signal.SIGINT else (128 + kill.sig,)
    if code in codes and lines == [LINES[kill.sig]]:
        return []
    python_end = not lines or lines[-1] == "KeyboardInterrupt"
    if code == -kill.sig and python_end and ", in main" not in stderr:
        return []  # Python's own end: before gdnc's handlers were installed, or after they went
    return [f"exit {code} after {kill.sig.name}: {stderr[-300:]!r}"]


def _judge(out: Path, source: Source, kill: Kill, code: int, stderr: str) -> str:
    """Hold the folder of ``out`` and the exit to the promise (module docstring); tally the case;
    the output's state."""
    state = _state(out, source, kill)
    problems = [] if state in ("old", "new", "absent") else [state]
    if kill.expect is not None and state != kill.expect:
        problems.append(f"expected the {kill.expect} output, found {state}")
    names = _names(out.parent)
    hidden = [n for n in names if n.startswith(".")]
    if any(not TEMP.fullmatch(n) for n in hidden) or (hidden and kill.sig != signal.SIGKILL):
        problems.append(f"hidden files {hidden} after {kill.sig.name}")
    kept = {out.name, *(p.name for p in external_data_files(out))} if out.exists() else set()
    strays = [n for n in names if not n.startswith(".") and n not in kept]
    unreferenced_data = kill.sig == signal.SIGKILL and all(_data_name(out.name).fullmatch(n) for n in strays)
    if strays and not unreferenced_data:
        problems.append(f"stray files {strays}")
    problems += _exit_problems(kill, state, code, stderr)
    if problems:
        TALLY.tried[SUITE] += 1
        TALLY.broken.append(f"{SUITE}: {kill}: {'; '.join(problems)}")
        raise AssertionError(f"{kill}: {'; '.join(problems)}")
    TALLY.note(SUITE, f"kills leaving the {'new output complete' if state == 'new' else 'old output intact'}")
    return state


def _run_kill(source: Source, kill: Kill, folder: Path) -> None:
    folder.mkdir()
    out = folder / "out.onnx"
    if kill.previous:
        for name, content in source.old.items():
            (folder / name).write_bytes(content)
    marker = folder.with_name(folder.name + ".marker")
    proc = _gdnc(source.args(out), marker, kill.mode)
    try:
        if kill.mode is None:
            time.sleep(kill.at * source.seconds)
        else:
            _wait_for(marker, proc)
            time.sleep(kill.at)
        proc.send_signal(kill.sig)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    state = _judge(out, source, kill, proc.returncode, stderr)
    print(f"{kill}: {state} output, exit {proc.returncode}")  # shown by pytest -rP


KILL, INT, TERM, HUP = signal.SIGKILL, signal.SIGINT, signal.SIGTERM, signal.SIGHUP


def _spread(n: int, previous: bool = True, signals: tuple[signal.Signals, signal.Signals] = (KILL, INT)
            ) -> list[Kill]:
    """n moments per signal over the conversion's lifetime, the second signal's between the first's."""
    return [Kill(sig, (i + offset) / n, previous=previous)
            for sig, offset in zip(signals, (0.25, 0.75)) for i in range(n)]


# mid-write: the old output; just before the model's rename: old after SIGKILL (the new data file
# already in place, unreferenced), new after SIGINT, SIGTERM or SIGHUP (held back until the commit
# is done); just after it: new (SIGKILL may leave the old data file)
AT_WRITES = {
    "onnx": [Kill(KILL, mode="write", expect="old"), Kill(INT, mode="write", expect="old"),
             Kill(KILL, mode="before-rename", expect="old"), Kill(INT, mode="after-rename", expect="new"),
             Kill(TERM, mode="write", expect="old")],
    "gguf": [Kill(KILL, mode="write", expect="old"), Kill(INT, mode="write", expect="old"),
             Kill(KILL, mode="before-rename", expect="old"), Kill(INT, mode="before-rename", expect="new"),
             Kill(KILL, mode="after-rename", expect="new"), Kill(INT, mode="after-rename", expect="new"),
             Kill(HUP, mode="before-rename", expect="new")],
}
SLOW_AT_WRITES = [
    *(Kill(sig, PAUSE + extra, mode="write") for sig in (KILL, INT, TERM) for extra in (0.01, 0.3, 0.8)),
    Kill(INT, mode="before-rename", expect="new"), Kill(KILL, mode="after-rename", expect="new"),
    Kill(TERM, mode="write", expect="old"), Kill(HUP, mode="write", expect="old"),
    *(Kill(sig, mode=mode, expect="new") for sig in (TERM, HUP)
      for mode in ("before-rename", "after-rename")),
    *(Kill(sig, mode="write", previous=False, expect="absent") for sig in (KILL, INT, TERM, HUP)),
]
CASES = [pytest.param(name, kill, id=f"{name}-{kill}") for name in ("onnx", "gguf")
         for kill in _spread(4) + AT_WRITES[name]]
SLOW_CASES = [pytest.param(name, kill, id=f"{name}-{kill}", marks=pytest.mark.slow)
              for name in ("onnx", "gguf")
              for kill in _spread(12) + _spread(4, signals=(TERM, HUP)) + _spread(2, previous=False)
              + [k for k in SLOW_AT_WRITES if k not in AT_WRITES[name]]]


@pytest.mark.parametrize(("name", "kill"), CASES + SLOW_CASES)
def test_killed_conversion_leaves_old_or_new_output(sources, tmp_path, name, kill):
    _run_kill(sources(name), kill, tmp_path / "case")
