"""The typer app: global flags, one-line errors and the command decorator; `main` runs it."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from snptool import __version__
from snptool.core.interrupts import interrupt_reported
from snptool.errors import SnpError, Terminated

# click's exception classes, wherever this typer takes click from (0.2x vendors it privately).
_CLICK = {cls.__name__: cls for cls in typer.BadParameter.__mro__}


class _OneLineUsageErrors(TyperGroup):
    """click prints a usage error as usage, hint and message on four lines; print one."""

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            code = super().main(args, prog_name, complete_var, False, **extra)
        except _CLICK["UsageError"] as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # its message is the help text
                error.show()
            else:
                where = error.ctx.command_path if error.ctx else "snptool"
                message = " ".join(error.format_message().split())
                hint = f"see `{where} --help`."
                if message.endswith("?"):
                    typer.echo(f"error: {message} {hint.capitalize()}", err=True)
                else:
                    typer.echo(f"error: {message.rstrip('.')}; {hint}", err=True)
            sys.exit(error.exit_code)
        except _CLICK["ClickException"] as error:
            error.show()
            sys.exit(error.exit_code)
        except typer.Abort:
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    cls=_OneLineUsageErrors,
    name="snptool",
    help="Explain and prune trained image classifiers by the labels every single unit serves.",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)
_state = {"debug": bool(os.environ.get("SNPTOOL_DEBUG"))}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"snptool {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or tables.")
    ] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Explain and prune trained image classifiers by the labels every single unit serves."""
    from snptool.core import console

    _state["debug"] = debug or bool(os.environ.get("SNPTOOL_DEBUG"))
    console.set_quiet(quiet)


def _reports_errors(command: Callable) -> Callable:
    """Turn SnpError into one stderr line + exit 2, and Ctrl-C into exit 130."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from snptool.core import console

        try:
            return command(*args, **kwargs)
        except SnpError as error:
            if _state["debug"]:
                raise
            console.error(str(error), collective=getattr(error, "collective", False))
            raise typer.Exit(error.exit_code) from None
        except KeyboardInterrupt as interrupt:
            interrupt_reported()
            console.error("interrupted; no half-written file is left and no input changed.")
            raise typer.Exit(143 if isinstance(interrupt, Terminated) else 130) from None

    return wrapper


def _applies_trust(command: Callable) -> Callable:
    """Run the command trusting the code spec its `--arch` names, or all with `--trust-code`
    (core/trust.py): the only code a file may make snptool run."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from snptool.core.trust import trust_code

        arch = kwargs.get("arch")
        named = arch if isinstance(arch, str) else None
        with trust_code(named, everything=kwargs.get("trust_code") is True):
            return command(*args, **kwargs)

    return wrapper


def command(name: str | None = None) -> Callable:
    def register(function: Callable) -> Callable:
        return app.command(name)(_reports_errors(_applies_trust(function)))

    return register
