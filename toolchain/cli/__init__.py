"""The `toolchain` command line, on top of toolchain.api and toolchain.pipeline; nothing below imports it.

Usage:
    toolchain --help                 # the console script (setup.cfg: toolchain.cli:main)
    python -m toolchain.cli --help   # the same, as torchrun runs it: torchrun --nproc-per-node 2 -m toolchain.cli ...

Modules: commands (the click group and the small commands), quantize, run, options (shared options), output
(verbosity, JSON), errors (one-line messages and exit codes), text (human-readable summaries).
"""

from toolchain.cli.commands import main

__all__ = ["main"]
