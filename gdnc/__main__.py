"""``python -m gdnc`` is the ``gdnc`` command."""

from gdnc.cli import main

main()
