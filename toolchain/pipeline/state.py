"""What a run has finished, kept in its run directory so that `toolchain run --resume` can go on from there.

Usage:
    state = RunState.start(folder, config_hash)             # a new run: an empty record
    state = RunState.resume(folder, config_hash)            # ConfigError unless the folder holds this config's run
    entry = state.finished("calibration")                   # the stage's report entry, or None
    entry = state.reuse("calibration")                      # ... taken as this session's result (listed in the report)
    state.finish("calibration", entry)                      # atomically rewritten after each stage

The record (run.state.json) maps each finished stage (model, calibration, fp32, quantize:NAME) to its part
of the report. A stage that was running when the run stopped is not in it: it starts again, from its own
checkpoint when it keeps one (generation's calibration.npz.ckpt, reconstruction's NAME.onnx.ckpt), which
continue bit for bit. The config hash ties the record to one resolved config: another config cannot
resume it (its outputs would mix two runs).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from toolchain.core.atomic import atomic_output
from toolchain.errors import ConfigError

STATE_FILE = "run.state.json"


class RunState:
    """The finished stages of one run directory (see the module docstring)."""

    def __init__(self, folder: Path, config_hash: str, stages: dict[str, Any], resumed: bool) -> None:
        self.folder, self.config_hash, self.stages, self.resumed = folder, config_hash, stages, resumed
        self.reused: list[str] = []  # the stages this session took from the record

    @classmethod
    def start(cls, folder: Path, config_hash: str) -> RunState:
        state = cls(folder, config_hash, {}, resumed=False)
        state._write()
        return state

    @classmethod
    def resume(cls, folder: Path, config_hash: str) -> RunState:
        path = folder / STATE_FILE
        if not path.is_file():
            raise ConfigError(f"{folder} holds no run to resume (no {STATE_FILE}): it was made before --resume existed "
                              "or is not a run directory; run without --resume (add --overwrite to replace it)")
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise ConfigError(f"{path} cannot be read ({err}); run without --resume, with --overwrite") from None
        if saved.get("config_hash") != config_hash:
            raise ConfigError(f"{folder} was made with another config (hash {str(saved.get('config_hash'))[:12]}, this one "
                              f"{config_hash[:12]}): --resume needs the same config and flags; run with --overwrite to "
                              "start afresh, or choose another --run-dir")
        return cls(folder, config_hash, dict(saved.get("stages", {})), resumed=True)

    def finished(self, stage: str) -> Any | None:
        """The stage's recorded entry when it finished in an earlier session, else None."""
        return self.stages.get(stage)

    def reuse(self, stage: str) -> Any:
        """The finished stage's entry, counted among this session's reused stages (the report lists them)."""
        self.reused.append(stage)
        return self.stages[stage]

    def finish(self, stage: str, entry: Any) -> None:
        self.stages[stage] = entry
        self._write()

    def _write(self) -> None:
        with atomic_output(self.folder / STATE_FILE) as tmp:
            tmp.write_text(json.dumps({"config_hash": self.config_hash, "stages": self.stages}, indent=1, default=float),
                           encoding="utf-8")
