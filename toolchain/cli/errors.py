"""How the CLI ends when something goes wrong: one line on stderr, a non-zero exit code, never a traceback.

Usage:
    @cli.command()
    @handle_errors
    def quantize_command(...): ...

    toolchain --debug quantize ...        # an internal error prints its traceback too
    TOOLCHAIN_DEBUG=1 toolchain ...       # the same, for pipelines that cannot change the command line

What a command raises becomes (the exit codes are EXIT_CODES, listed in `toolchain --help` and the README):
- ToolchainError (bad input the user can fix): its one-line message, exit 2 (as click's usage errors);
- OSError (disk full, permission denied, a file vanished): the system's message naming the file, exit 2;
- MemoryError: a line saying so and what to reduce, exit 2;
- GateFailed (an accuracy gate of `toolchain run`): the failed gates in one line, exit 3;
- KeyboardInterrupt: a line saying what was kept, exit 130;
- anything else (a bug in the toolchain): one line naming the error and the log file that holds the full
  traceback, exit 1.
Outputs are written atomically everywhere (modelio.atomic_output), so none of these leaves a partial file.
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from toolchain.errors import EXIT_BAD_INPUT, EXIT_GATE, EXIT_INTERNAL, EXIT_INTERRUPTED, EXIT_OK, GateFailed, ToolchainError

F = TypeVar("F", bound=Callable[..., Any])

__all__ = ["EXIT_BAD_INPUT", "EXIT_GATE", "EXIT_INTERNAL", "EXIT_INTERRUPTED", "EXIT_OK", "BadInput", "handle_errors"]
EXIT_CODES_TEXT = ("Exit codes: 0 success; 1 internal error (one line names the log file holding the traceback; "
                   "--debug prints it); 2 usage error or bad input (one line says what to fix); 3 an accuracy gate "
                   "failed (--min-top1, --max-drop, --min-agreement; the outputs are written); 130 interrupted.")


class BadInput(click.ClickException):
    """A ToolchainError on its way out: click prints 'Error: MESSAGE' and exits EXIT_BAD_INPUT."""

    exit_code = EXIT_BAD_INPUT

DEBUG_ENV = "TOOLCHAIN_DEBUG"
LOG_DIR_ENV = "TOOLCHAIN_LOG_DIR"
INTERNAL_ERROR = "internal error"  # the marker the fuzz tests look for: bad input must never reach this path


def debug_requested() -> bool:
    """--debug on the command group, or TOOLCHAIN_DEBUG=1 in the environment."""
    context = click.get_current_context(silent=True)
    flag = bool(context and context.find_root().params.get("debug"))
    return flag or os.environ.get(DEBUG_ENV, "").lower() in ("1", "true", "yes")


def crash_log_dir() -> Path:
    """$TOOLCHAIN_LOG_DIR, else ~/.cache/toolchain/logs (XDG_CACHE_HOME respected)."""
    if env := os.environ.get(LOG_DIR_ENV):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "toolchain" / "logs"


def write_crash_log(command: str, text: str) -> Path | None:
    """Write `text` to a new file in the log folder (the temporary folder if that is not writable); None if neither is."""
    name = f"crash-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for folder in (crash_log_dir(), Path(tempfile.gettempdir())):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / name
            path.write_text(f"toolchain {command}\nargv: {sys.argv!r}\n\n{text}")
            return path
        except OSError:
            continue
    return None


def _command_name() -> str:
    context = click.get_current_context(silent=True)
    return context.command_path if context is not None else "toolchain"


def _fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    click.echo(f"Error: {message}", err=True)
    sys.exit(code)


def _internal_error(err: BaseException) -> None:
    text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
    command = _command_name()
    log = write_crash_log(command, text)
    if debug_requested():
        click.echo(text, err=True, nl=False)
    where = f"the traceback is in {log}" if log is not None else "no log file could be written"
    summary = " ".join(f"{type(err).__name__}: {err}".split())[:300]
    _fail(f"{INTERNAL_ERROR} in `{command}` ({summary}); {where}. Rerun with `toolchain --debug ...` to print it, "
          "and please report it with that file", EXIT_INTERNAL)


def handle_errors(func: F) -> F:
    """Run a command so that every failure ends as one line on stderr with the exit code the module docstring lists."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except ToolchainError as err:
            raise BadInput(str(err)) from err
        except GateFailed as err:
            _fail(str(err), EXIT_GATE)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted; no output was written (where OUTPUT.ckpt exists, --resume continues from it)", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except MemoryError:
            _fail("out of memory; use fewer calibration images (--calib-limit, -n) or a smaller batch size")
        except OSError as err:
            if debug_requested():
                traceback.print_exc()
            detail = f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")
            _fail(f"{detail}; check the path, its permissions and the free disk space")
        except Exception as err:  # noqa: BLE001 - the last line of defence: a bug must still end in one line
            _internal_error(err)

    return wrapper  # type: ignore[return-value]  # same signature as func (functools.wraps); mypy cannot see it
