"""The `snptool` command line: one short function per subcommand over the library API.

Human output goes to stderr; `--json` prints the result on stdout. Bad input ends with one
line on stderr and exit status 2 (a traceback only with --debug or SNPTOOL_DEBUG=1).

`main` installs the interrupt handlers before it imports typer and the commands, so Ctrl-C
while starting up is one line too; `app` is imported on first use.
"""

import importlib
import sys
from typing import Any

# Each module registers its commands on `app`; `snptool --help` lists them in this order.
_COMMAND_MODULES = ("training", "analysis", "pruning", "deployment", "studies", "reporting")


def _load_app() -> Any:
    from snptool.cli.app import app

    for module in _COMMAND_MODULES:
        importlib.import_module(f"snptool.cli.{module}")
    globals()["app"] = app  # importing snptool.cli.app bound the name to that module
    return app


def main() -> None:
    """The console entry point: Ctrl-C and SIGTERM end in one line and 130 / 143 wherever
    they arrive, while starting up and after the last output was written included."""
    from snptool.core import interrupts

    interrupts.install_interrupt_handlers()
    code: object = 0
    try:
        _load_app()()
    except SystemExit as done:
        code = done.code
    except KeyboardInterrupt:  # while starting up, or after the command's own handling
        code = 130
    interrupts.ignore_interrupts()
    status, untold = interrupts.exit_status(code)
    if untold:
        sys.stderr.write("error: interrupted; no input changed.\n")
    sys.exit(status)


def __getattr__(name: str) -> Any:
    if name == "app":
        return _load_app()
    raise AttributeError(f"module 'snptool.cli' has no attribute {name!r}")


__all__ = ["app", "main"]
