"""Typed configuration of block reconstruction (BRECQ / PD-Quant), with presets.

Usage:
    recon = ReconConfig.preset("pdquant", "default")               # every ingredient of the method on
    recon = ReconConfig.preset("brecq", "fast", iterations=50)     # overrides by keyword
    recon = replace(recon, distribution_correction=False)          # ablations: one field each
    ReconConfig.from_dict(recon.to_dict())                         # JSON round trip (quantizer report)

Methods (../shared/docs/methods.md sections 0 and 3):
- none: the calibrator's ranges and nearest rounding (no reconstruction).
- brecq: AdaRound learned rounding per unit minimising the unit's output error, inputs from the already
  quantized network, QDrop (random mixing of quantized and FP activations).
- pdquant: brecq + the prediction-difference term (KL through the FP rest of the network), learned
  activation step sizes, and distribution correction of the FP unit inputs toward the BN statistics.

Presets: `paper` = PD-Quant's settings (20k iterations per unit, 500 DC steps, PD weight 10 at every
bit-width); `default` = the best accuracy per CPU-minute measured on ResNet-20 (bench/pdquant.py; PD
weight by weight bits, see `pd_weight`); `cpu` = ImageNet-size models on a few CPU cores (100 iterations
per unit at batch 8: ResNet-18 @224 W4A4 in 23.5 min on 2 cores, bench/scale.py); `thorough` = the
budget grid's best point on ResNet-20 W4A4 zero-shot (79.95 +- 0.23 % over 3 seeds, FP32 81.03 %; 3000 iterations per unit,
measured with 1024 calibration images: bench/pdquant.py --suite budget; 1-2 h per model on 2 cores); `fast` = tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Literal

from toolchain.errors import ConfigError

Method = Literal["none", "brecq", "pdquant"]
METHODS = ("none", "brecq", "pdquant")
PRESETS = ("fast", "cpu", "default", "thorough", "paper")
# The calibration set size a preset was measured with, where fewer images lose what its budget buys
# (ResNet-20 W4A4: 256 -> 1024 DGH images gains more than 300 -> 3000 iterations per unit; README "Scale").
PRESET_IMAGES = {"thorough": 1024}


@dataclass(frozen=True)
class ReconConfig:
    """What reconstruction does; every ingredient can be switched on its own.

    Attributes:
        method: none, brecq or pdquant (decides the defaults of the switches below).
        preset_name: the preset the numbers came from (recorded in reports).
        iterations: optimisation steps per unit (PD-Quant: 20 000).
        batch_size: calibration samples per step (the PD half doubles it, as in PD-Quant).
        qdrop: QDrop on: activation quantizers keep the quantized value with probability `qdrop_prob` per
            element, and the unit input mixes quantized and FP inputs 50/50.
        qdrop_prob: probability of the quantized value per element.
        prediction_difference: add KL(softmax(z_fp/T) || softmax(z_q/T)) through the FP rest of the network.
        pd_weight: weight of the PD term (1 / lambda_r); None = by weight bits (`resolved`): PD-Quant's 10
            when every weight has 4 bits or more, 1 when some have fewer. Measured on ResNet-20 (DGH data,
            seed 0, bench/pdquant.py --suite pdweight): W4A4 10 -> 79.55 %, 1 -> 78.24 %; W2A4 10 -> 50.89 %,
            3 -> 59.59 %, 1 -> 60.99 % (the term over-fits the small calibration set at 2 bits).
        temperature: T of the PD term.
        learn_scales: learn the unit's activation step sizes (LSQ-style, through the STE).
        scale_lr: Adam learning rate of the step sizes, cosine-annealed to 0.
        distribution_correction: nudge the FP unit inputs toward the BN statistics first (DC).
        dc_steps: Adam steps of DC per batch; dc_lr its learning rate; dc_lambda its lambda_c.
        dc_batch_size: samples per DC batch (per-sample statistics: it only changes speed).
        round_lr: Adam learning rate of the AdaRound variables (the `cpu` preset's short budget uses 10x).
        round_weight: lambda of the rounding regulariser; beta anneals beta_start -> beta_end after
            `warmup` of the iterations (regulariser off before).
        max_unit_layers: a unit with more weighted layers than this is reconstructed layer by layer.
        seed: sampling, QDrop masks and input mixing.
    """

    method: Method = "none"
    preset_name: str = "default"
    iterations: int = 300
    batch_size: int = 32
    qdrop: bool = False
    qdrop_prob: float = 0.5
    prediction_difference: bool = False
    pd_weight: float | None = None
    temperature: float = 4.0
    learn_scales: bool = False
    scale_lr: float = 4e-5
    distribution_correction: bool = False
    dc_steps: int = 500
    dc_lr: float = 1e-3
    dc_lambda: float = 0.02
    dc_batch_size: int = 128
    round_lr: float = 3e-3
    round_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    max_unit_layers: int = 8
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"unknown reconstruction {self.method!r}: choose {', '.join(METHODS)}")
        if self.iterations < 1 or self.batch_size < 1 or self.dc_batch_size < 1 or self.dc_steps < 0:
            raise ConfigError("reconstruction iterations and batch sizes must be >= 1 (dc_steps >= 0)")
        if not 0.0 <= self.qdrop_prob <= 1.0 or not 0.0 <= self.warmup < 1.0:
            raise ConfigError("qdrop_prob must be in [0, 1] and warmup in [0, 1)")
        if self.temperature <= 0 or self.dc_lambda <= 0 or self.max_unit_layers < 1:
            raise ConfigError("temperature and dc_lambda must be > 0, max_unit_layers >= 1")
        if self.pd_weight is not None and self.pd_weight <= 0:
            raise ConfigError(f"pd_weight must be > 0 (or None for the weight-bits default), got {self.pd_weight}")

    def resolved(self, min_weight_bits: int) -> ReconConfig:
        """This config with the defaults that depend on the quantized model filled in (pd_weight)."""
        if self.pd_weight is not None:
            return self
        return replace(self, pd_weight=10.0 if min_weight_bits >= 4 else 1.0)

    @property
    def enabled(self) -> bool:
        return self.method != "none"

    @classmethod
    def preset(cls, method: str, preset: str = "default", **overrides: Any) -> ReconConfig:
        """The method's ingredients at the preset's budget; keyword overrides win."""
        if preset not in PRESETS:
            raise ConfigError(f"unknown reconstruction preset {preset!r}: choose {', '.join(PRESETS)}")
        if method not in METHODS:
            raise ConfigError(f"unknown reconstruction {method!r}: choose {', '.join(METHODS)}")
        pd = method == "pdquant"
        base = cls(method=method, preset_name=preset, qdrop=method != "none", prediction_difference=pd,  # type: ignore[arg-type]  # method: checked against METHODS above
                   learn_scales=pd, distribution_correction=pd)
        budgets: dict[str, dict[str, Any]] = {
            # PD-Quant's run_script.py: 20k iterations per unit, batch 32, 500 DC steps.
            "paper": {"iterations": 20000, "batch_size": 32, "dc_steps": 500, "pd_weight": 10.0},
            # Measured on ResNet-20 W4A4 (bench/pdquant.py): see the README's reconstruction table.
            "default": {"iterations": 300, "batch_size": 32, "dc_steps": 50},  # 100: 78.81 % in 92 s; 300: 79.55 % in 195 s
            # The budget grid's best point (README "Scale"): with 1024 DGH images, 10x the default's iterations.
            "thorough": {"iterations": 3000, "batch_size": 32, "dc_steps": 50},
            # ImageNet-size models on CPUs: ResNet-18 @224 W4A4 in 23.5 min, MobileNetV2 in bench/scale.py's table.
            # Round learning rate 10x: 100 Adam steps of 3e-3 move a rounding variable by 0.3 at most, too little to
            # flip a rounding (|alpha| = 2.4 from a GPTQ start); ResNet-20 W4A4 at 100 iterations, seeds 0 / 1:
            # 0.03 -> 80.07 / 79.11 %, 0.003 -> 78.78 / 78.80 % (README, "Pretrained ImageNet models").
            "cpu": {"iterations": 100, "batch_size": 8, "dc_steps": 50, "round_lr": 3e-2},
            "fast": {"iterations": 6, "batch_size": 8, "dc_steps": 2, "dc_batch_size": 16},
        }
        budget = budgets[preset]
        return replace(base, **{**budget, **{k: v for k, v in overrides.items() if v is not None}})

    def calibration_advice(self, images: int) -> str | None:
        """A warning when the calibration set is smaller than the one this preset was measured with, else None."""
        wanted = PRESET_IMAGES.get(self.preset_name)
        if not self.enabled or wanted is None or images >= wanted:
            return None
        return (f"reconstruction preset {self.preset_name!r} was measured with {wanted} calibration images and this set "
                f"has {images}: more images buy more accuracy than more iterations (README, Scale); generate "
                f"{wanted} with `toolchain generate -n {wanted}`")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReconConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown reconstruction config keys: {', '.join(unknown)}")
        return cls(**data)
