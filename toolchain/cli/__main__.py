"""`python -m toolchain.cli ...` (and torchrun's `-m toolchain.cli`) runs the command line."""

from toolchain.cli.commands import main

main()
