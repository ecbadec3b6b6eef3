"""The ``cxrbench`` command line (Contract 1). Thin: parses, calls the modules, maps errors.

Each command lives in ``cxrbench.commands.<name>`` and registers itself on :data:`app`; heavy
imports (torch, timm) happen inside the command bodies so ``cxrbench --help`` stays fast.
Exit status: 0 success, 2 usage or input error (one line: what, where, how to fix), 1 internal.
"""

from __future__ import annotations

import sys

import click
import typer
from typer._click import exceptions as click_errors
from typer.core import TyperGroup

from cxrbench import __version__
from cxrbench.commands import COMMAND_MODULES
from cxrbench.commands._help import tidy_help
from cxrbench.commands._usage import usage_error
from cxrbench.common.errors import CxrbenchError, InputError, command_line


def _print_error(err: CxrbenchError) -> None:
    click.echo(f"error: {err.one_line()}", err=True)


class CxrbenchGroup(TyperGroup):
    """Catches :class:`CxrbenchError` anywhere below and turns it into one line + exit 2.

    The common layer turns file errors into InputErrors with the file and the fix; an OS or decoding
    error that still escapes from a command (a path the user gave that cannot be read or written) is
    bad input too: one line naming the file, exit 2, never a traceback.

    A usage error of the command-line parser (a number option given text, a value out of range, an
    unknown option, a missing option or argument) is bad input in the same shape: one ``error:`` line
    naming the option, what was given, what is allowed and the fix (``commands/_usage.py``), exit 2,
    instead of the parser's multi-line box. A command or group given no arguments at all still shows
    its help. Commands run inside :func:`~cxrbench.common.errors.command_line`, so the library's
    messages name the command-line flags (``--bootstrap``) instead of the Python parameters.
    """

    _argv: tuple[str, ...] = ()

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[override]
        self._argv = tuple(args)
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click_errors.UsageError as err:
            if isinstance(err, click_errors.NoArgsIsHelpError):
                raise
            _print_error(usage_error(err, self._argv, self))
            raise typer.Exit(2) from None

    def invoke(self, ctx: click.Context):
        try:
            with command_line():  # messages name the flags (--overwrite), not Python parameters
                return super().invoke(ctx)
        except click_errors.UsageError as err:
            if isinstance(err, click_errors.NoArgsIsHelpError):
                raise
            _print_error(usage_error(err, self._argv, ctx.command))
            ctx.exit(2)
        except CxrbenchError as err:
            _print_error(err)
            ctx.exit(err.exit_code)
        except OSError as err:
            if not getattr(err, "filename", None):
                raise
            from cxrbench.common.fileio import os_error

            action = "write" if isinstance(err, PermissionError | IsADirectoryError) else "read"
            converted = os_error(err, err.filename, action)
            _print_error(converted)
            ctx.exit(converted.exit_code)
        except UnicodeDecodeError as err:
            converted = InputError(f"a file is not UTF-8 text ({err.reason} at byte {err.start})",
                                   fix="save the file as UTF-8")
            _print_error(converted)
            ctx.exit(converted.exit_code)


app = typer.Typer(
    cls=CxrbenchGroup,
    name="cxrbench",
    help="Train and compare chest-radiograph classifiers across pretrained initializations.\n\n"
    "Pipeline: phantom/index -> prepare -> train -> evaluate -> compare; `study run` does it all.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"cxrbench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """cxrbench command line."""


for _module in COMMAND_MODULES:
    _module.register(app)
tidy_help(app)  # one place folds every help paragraph and shows [brackets] as typed


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except CxrbenchError as err:  # raised outside a command (e.g. while registering)
        _print_error(err)
        sys.exit(err.exit_code)
