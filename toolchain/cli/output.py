"""What every `toolchain` command prints, and how much: --json, --quiet, --log-level.

Usage:
    @cli.command()
    @output_options()                  # adds --json (as_json), --quiet/-q and --log-level
    @handle_errors
    def inspect_command(model, as_json): ...
        say("wrote ...")               # the command's result text: not with --quiet
        warn("...")                    # 'warning: ...' on stderr unless --log-level error / --quiet
        progress_wanted()              # progress bars: off with --quiet

Messages go through the "toolchain" logger, so a Python caller sees the same records with its own logging
setup; the CLI adds one stderr handler at the chosen level. Nothing ever prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}
_QUIET, _LEVEL = "toolchain.quiet", "toolchain.log_level"


class _ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        return message if record.levelno == logging.INFO else f"{record.levelname.lower()}: {message}"


class _ConsoleHandler(logging.StreamHandler):
    """stderr, looked up when each record is written (click's test runner swaps the stream per invocation)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # noqa: BLE001 - logging must never end a command
            self.handleError(record)


def _install_console(ctx: click.Context) -> None:
    quiet = ctx.meta.get(_QUIET, False)
    level = logging.ERROR if quiet else LEVELS[ctx.meta.get(_LEVEL) or ctx.meta.get("toolchain.default_level", "warning")]
    logger = logging.getLogger("toolchain")
    for handler in [h for h in logger.handlers if isinstance(h, _ConsoleHandler)]:
        logger.removeHandler(handler)
    handler = _ConsoleHandler()
    handler.setFormatter(_ConsoleFormatter())
    handler.setLevel(level)
    logger.addHandler(handler)
    logger.setLevel(level)


def _remember(key: str, default_level: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        ctx.meta["toolchain.default_level"] = default_level
        if value is not None:
            ctx.meta[key] = value
        _install_console(ctx)

    return callback


def output_options(json_output: bool = True, default_level: str = "warning") -> Callable[[F], F]:
    """--quiet and --log-level on a command (and --json, passed as `as_json`, when `json_output`)."""

    def decorate(func: F) -> F:
        options = [
            click.option("--quiet", "-q", is_flag=True, expose_value=False, callback=_remember(_QUIET, default_level),
                         help="Print nothing but errors (and --json's object): no progress bars, no result text, no warnings."),
            click.option("--log-level", type=click.Choice(list(LEVELS)), expose_value=False,
                         callback=_remember(_LEVEL, default_level),
                         help=f"Messages shown on stderr from this level up [default: {default_level}]."),
        ]
        if json_output:
            options.append(click.option("--json", "as_json", is_flag=True,
                                        help="Print one JSON object on stdout instead of text (progress bars stay on stderr)."))
        for option in reversed(options):
            func = option(func)
        return func

    return decorate


def quiet() -> bool:
    context = click.get_current_context(silent=True)
    return bool(context and context.meta.get(_QUIET))


def progress_wanted() -> bool:
    return not quiet()


def say(text: str) -> None:
    """The command's result text on stdout (not with --quiet)."""
    if not quiet():
        click.echo(text)


def warn(text: str) -> None:
    logging.getLogger("toolchain.cli").warning(text)
