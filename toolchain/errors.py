"""Errors a user can fix: the CLI turns them into one line and a non-zero exit, with no traceback.

Usage:
    raise ModelFileError(f"{path}: not an ONNX file ({err}); export one with `toolchain export`")

Everything else (a bug in the toolchain) is left to propagate with its traceback.
"""

from __future__ import annotations

# How a command ends: the CLI exits with these, and pipeline.RunResult.exit_code says which one a run earned.
EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT, EXIT_GATE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class ToolchainError(Exception):
    """Base class of every error caused by the user's input; its message says what to fix."""


class ConfigError(ToolchainError):
    """An option or config value is out of range or inconsistent."""


class ModelFileError(ToolchainError):
    """A model file is missing, unreadable, truncated or not ONNX."""


class GraphError(ToolchainError):
    """The ONNX graph cannot be handled (unsupported op, non-image input, missing BN, ...)."""


class ZooError(ToolchainError):
    """A model name is unknown or its weights do not fit the architecture."""


class PreprocessingError(ToolchainError):
    """The model's input preprocessing is missing or invalid."""


class DataError(ToolchainError):
    """An image dataset or calibration file is missing, empty or does not fit the model."""


class ExportError(ToolchainError):
    """Export to ONNX failed or did not verify."""


class GateFailed(Exception):
    """An accuracy gate of `toolchain run` failed: the run finished and wrote its outputs, the model is not good
    enough. Not a ToolchainError: the input was valid, so the CLI exits 3, not 2."""
