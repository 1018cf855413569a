"""``python -m gdnc`` and the ``gdnc`` console script (Ctrl-C while it starts: one line, exit 130)."""

import sys

from gdnc import interrupt


def run() -> None:
    """Import the CLI and run it; an interrupt during the (long) imports is one line too."""
    with interrupt.recording():
        try:
            from gdnc.cli import main
        except BaseException as exc:
            if not interrupt.received():
                raise
            sys.stderr.write("interrupted\n")
            raise SystemExit(130) from exc
        main()


if __name__ == "__main__":
    run()
