"""The ``a0ctl`` command (``python -m a0ctl``).

``a0ctl run SERVICE`` is what supervisord, the containers and the pods start, once per
service process, and a service lives as long as the stack: it loads the run command
alone, not every other command's modules (the simulator holds half the memory it would,
each other service 12 to 17 MiB less). Every other command goes through the whole CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:2] == ["run"]:
        from a0ctl.commands.run import app as run_app
        from a0ctl.console import setup_logging

        setup_logging(verbose=False)
        run_app(prog_name="a0ctl run", args=sys.argv[2:])
        return
    from a0ctl.main import app

    app(prog_name="a0ctl")


if __name__ == "__main__":
    main()
