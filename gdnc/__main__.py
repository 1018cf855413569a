"""``python -m gdnc`` is the ``gdnc`` command (Ctrl-C while it starts: one line, exit 130)."""

import sys

try:
    from gdnc.cli import main
except KeyboardInterrupt:
    sys.stderr.write("interrupted\n")
    sys.exit(130)

main()
