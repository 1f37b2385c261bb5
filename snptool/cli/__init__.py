"""The `snptool` command line: one short function per subcommand over the library API.

Human output goes to stderr; `--json` prints the result on stdout. Bad input ends with one
line on stderr and exit status 2 (a traceback only with --debug or SNPTOOL_DEBUG=1).
"""

import importlib

from snptool.cli.app import app, main

# Each module registers its commands on `app`; `snptool --help` lists them in this order.
for _module in ("training", "analysis", "pruning", "deployment", "studies", "reporting"):
    importlib.import_module(f"snptool.cli.{_module}")

__all__ = ["app", "main"]
