"""``python -m gdnc`` and the ``gdnc`` console script (Ctrl-C, SIGTERM or SIGHUP while it
starts: one line, exit 128 + the signal)."""

import sys

from gdnc import interrupt


def run() -> None:
    """Import the CLI and run it; a stop signal during the (long) imports is one line too."""
    with interrupt.recording():
        try:
            from gdnc.cli import main
        except BaseException as exc:
            if not interrupt.received():
                raise
            line, code = interrupt.ending()
            sys.stderr.write(f"{line}\n")
            raise SystemExit(code) from exc
        main()


if __name__ == "__main__":
    run()
