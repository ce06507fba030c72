"""Typed configuration of the quantizer.

Usage:
    config = QuantConfig(w_bits=4, a_bits=4)                      # MSE calibrator chosen automatically below 8 bits
    config = QuantConfig(w_bits=8, a_bits=8, calibrator="percentile", percentile=99.99)
    config = QuantConfig(w_bits=4, a_bits=4, reconstruction=ReconConfig.preset("pdquant", "default"))
    config = QuantConfig(w_bits=8, a_bits=16, target="qnn")                 # uint16 activations, batch fixed to 1
    config = QuantConfig(a_bits=4, bit_budget=BitBudget(average_bits=3.0))  # per-layer weight bits, chosen zero-shot
    config = QuantConfig(w_bits=4, act_budget=ActivationBudget(average_bits=5.0))  # per-tensor activation bits, 4 or 8
    config.to_dict(); QuantConfig.from_dict(d)                    # JSON round trip (with a version)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from toolchain.errors import ConfigError
from toolchain.quantize.reconstruct.config import ReconConfig
from toolchain.quantize.targets import TargetName, TargetProfile, target_profile

DEFAULT_W_BITS_CHOICES = (2, 3, 4, 8)  # a budget's candidates: the target's among these (measured: README)
DEFAULT_A_BITS_CHOICES = (4, 8)  # an activation budget's candidates: the target's among these
SUPPORTED_BITS = {"w_bits": (2, 3, 4, 8), "a_bits": (2, 4, 8, 16), "input_bits": (2, 4, 8, 16)}  # each target's own: quantize.targets
Calibrator = Literal["minmax", "percentile", "mse"]
LowBitStorage = Literal["ort", "native"]
WeightRounding = Literal["nearest", "gptq"]  # None in QuantConfig: gptq, or AdaRound's own start with reconstruction
CONFIG_VERSION = 1


@dataclass(frozen=True)
class BitBudget:
    """Mixed precision: per-layer weight bits from `choices` whose total fits the budget (quantize.mixed_precision).

    Give one of average_bits (mean weight bits over all weights, counted by parameters) and size_bytes
    (bytes of the weights at their bits). `samples`: calibration inputs the per-layer sensitivity is
    measured on. `choices`: the candidate widths; None = the target's among 2, 3, 4, 8 (QuantConfig fills
    them in). `rounding`: how a layer is quantized while its sensitivity is measured, "nearest" or
    "compensated" (default: each input column's rounding error spread over the rest by the layer's input
    Hessian, as reconstruction will later recover much of it; mixed_precision.sensitivity (compensated rounding); measured against
    nearest in bench/results/mixed_precision.md)."""

    average_bits: float | None = None
    size_bytes: int | None = None
    choices: tuple[int, ...] | None = None
    samples: int = 256
    rounding: Literal["nearest", "compensated"] = "compensated"

    def __post_init__(self) -> None:
        if (self.average_bits is None) == (self.size_bytes is None):
            raise ConfigError("give one budget: --weight-bits-budget (average bits) or --size-budget (bytes), not both")
        if self.average_bits is not None and self.average_bits <= 0:
            raise ConfigError(f"--weight-bits-budget must be > 0, got {self.average_bits}")
        if self.size_bytes is not None and self.size_bytes <= 0:
            raise ConfigError(f"--size-budget must be > 0 bytes, got {self.size_bytes}")
        if self.choices is not None and (not self.choices or any(b not in SUPPORTED_BITS["w_bits"] for b in self.choices)):
            raise ConfigError(f"--w-bits-choices {','.join(map(str, self.choices))}: choose among "
                              f"{', '.join(map(str, SUPPORTED_BITS['w_bits']))}")
        if self.samples < 1:
            raise ConfigError(f"the sensitivity needs at least one sample, got {self.samples}")
        if self.rounding not in ("nearest", "compensated"):
            raise ConfigError(f"--sensitivity-rounding {self.rounding!r}: choose nearest or compensated")


@dataclass(frozen=True)
class ActivationBudget:
    """Mixed precision of activations: per-tensor bits from `choices` whose mean over all quantized activation
    elements (per input image, each tensor counted by its size) stays within `average_bits` (quantize.mixed_precision).

    `choices`: None = the target's widths among 4 and 8 (QuantConfig fills them in; two at least).
    `samples`: calibration inputs the per-tensor sensitivity is measured on. The network input keeps
    `input_bits`; it is not part of the budget."""

    average_bits: float
    choices: tuple[int, ...] | None = None
    samples: int = 256

    def __post_init__(self) -> None:
        if self.average_bits <= 0:
            raise ConfigError(f"--a-bits-budget must be > 0, got {self.average_bits}")
        if self.choices is not None and (len(set(self.choices)) < 2
                                         or any(b not in SUPPORTED_BITS["a_bits"] for b in self.choices)):
            raise ConfigError(f"--a-bits-choices {','.join(map(str, self.choices))}: give two or more of "
                              f"{', '.join(map(str, SUPPORTED_BITS['a_bits']))}")
        if self.samples < 1:
            raise ConfigError(f"the sensitivity needs at least one sample, got {self.samples}")


@dataclass(frozen=True)
class QuantConfig:
    """What the quantizer does.

    Attributes:
        w_bits: weight bits (symmetric, per output channel).
        a_bits: activation bits (asymmetric unsigned, per tensor).
        input_bits: bits of the network input (image data: 8 by nature; see benchmark-protocol.md); targets whose
            layers take one activation type (qnn) quantize it at `a_bits` instead (effective_input_bits).
        calibrator: how ranges are chosen; None = "mse" (for weights the MSE search runs below 8 bits only,
            see calibrate.weight_calibrator).
        percentile: the percentile calibrator's upper percentile of activation values.
        target: runtime profile deciding types, symmetry, bias, Q/DQ placement and shapes (quantize.targets);
            it also limits the bit-widths.
        batch: fix the batch dimension of the emitted model to this size (None: keep it dynamic, except for
            targets that need static shapes, qnn, where it is 1).
        first_last_8bit: the papers' "academic" setting: first and last layer weights at 8 bits,
            network output left in float.
        require_all_quantized: an op the quantizer has no rule for is an error instead of a warning.
        require_full_integer: fail unless onnxruntime runs every compute op on integers (nothing in float
            between Q/DQ pairs; only the input Q and output DQ convert).
        low_bit_storage: how tensors below 8 bits are stored. "native": INT4/UINT4 (opset 21) and
            INT2/UINT2 (opset 25). "ort" (default): what onnxruntime 1.32 loads with its default graph
            optimisations: weights in INT4 (2-bit values in an INT4 container), activations in UINT8 with
            a Clip to the low-bit range before the QuantizeLinear. The values, and so the accuracy, are
            the same; onnxruntime's QDQ fusion does not check the 2-bit types, nor 4-bit activations next
            to 8-bit weights, and builds an invalid graph from "native" files in those cases.
        reduce_range: 8-bit weights use 7 bits ([-64, 63]), as onnxruntime's reduce_range: needed where the
            model runs on x86 CPUs without VNNI, whose u8s8 kernels saturate with full-range weights
            (measured on ResNet-20 W8A8 on an AVX2 CPU: top-1 agreement of onnxruntime's integer kernels
            with the QDQ semantics 92.3 % full range, 99.9 % reduced). Lower bit-widths are unaffected.
        weight_rounding: how weights are rounded onto their grid. Without reconstruction: "gptq" (the default:
            each layer's rounding errors compensated through its input Hessian, calibrate.gptq; measured on
            EfficientNet-Lite0, 64 DGH images: W8A8 KL to FP32 0.046 against 0.058 with "nearest", W4A8 top-1
            66.6 % against 13.0 %) or "nearest". With reconstruction AdaRound learns the rounding; "gptq" makes
            it start from GPTQ's integers instead of the float weights (the default, the papers'); "nearest"
            is refused there.
        calib_batch_size: calibration batch size for onnxruntime.
        samples_per_tensor: values kept per activation tensor for the percentile/MSE searches.
        reconstruction: what runs after the calibrator (none / brecq / pdquant; see recon.config).
        bit_budget: choose each layer's weight bits under this budget (mixed precision, quantize.mixed_precision);
            `w_bits` is then unused.
        layer_w_bits: (node name, weight bits) pairs that replace `w_bits` for those layers (what bit_budget's
            allocation writes in; also settable by hand).
        act_budget: choose each activation tensor's bits under this budget (quantize.mixed_precision); `a_bits` then
            applies only to what the allocation does not cover (constants, and the input where the target
            quantizes it at activation bits).
        tensor_a_bits: (tensor name, activation bits) pairs that replace `a_bits` for those tensors (what
            act_budget's allocation writes in; also settable by hand).
    """

    w_bits: int = 8
    a_bits: int = 8
    input_bits: int = 8
    calibrator: Calibrator | None = None
    percentile: float = 99.99
    target: TargetName = "ort-x86"
    batch: int | None = None
    first_last_8bit: bool = False
    require_all_quantized: bool = False
    require_full_integer: bool = False
    low_bit_storage: LowBitStorage = "ort"
    reduce_range: bool = False
    weight_rounding: WeightRounding | None = None
    calib_batch_size: int = 64
    samples_per_tensor: int = 1 << 18
    reconstruction: ReconConfig = field(default_factory=ReconConfig)
    bit_budget: BitBudget | None = None
    layer_w_bits: tuple[tuple[str, int], ...] = ()
    act_budget: ActivationBudget | None = None
    tensor_a_bits: tuple[tuple[str, int], ...] = ()
    version: int = CONFIG_VERSION

    def __post_init__(self) -> None:
        for name in ("w_bits", "a_bits", "input_bits"):
            value = getattr(self, name)
            if value not in SUPPORTED_BITS[name]:
                flag = "--" + name.replace("_", "-")
                raise ConfigError(f"{flag} {value} is not supported: choose one of {', '.join(map(str, SUPPORTED_BITS[name]))}")
        self.profile.check_bits(self.w_bits, self.a_bits)
        if self.bit_budget is not None and self.bit_budget.choices is None:  # frozen: set once, here
            choices = tuple(b for b in DEFAULT_W_BITS_CHOICES if b in self.profile.weight_bits)
            object.__setattr__(self, "bit_budget", replace(self.bit_budget, choices=choices))
        for bits in sorted({b for _, b in self.layer_w_bits} | set(self.bit_budget.choices or () if self.bit_budget else ())):
            self.profile.check_bits(bits, self.a_bits)
        mixes = self.act_budget is not None or len({b for _, b in self.tensor_a_bits} | {self.a_bits}) > 1
        if mixes and self.profile.mixed_activations is not None:
            raise ConfigError(f"--target {self.target} takes one activation width: {self.profile.mixed_activations}; "
                              "drop --a-bits-budget and give one --a-bits")
        if self.act_budget is not None and self.act_budget.choices is None:
            choices = tuple(b for b in DEFAULT_A_BITS_CHOICES if b in self.profile.activation_bits)
            if len(choices) < 2:
                raise ConfigError(f"--target {self.target} runs one activation width "
                                  f"({'/'.join(map(str, self.profile.activation_bits))}): drop --a-bits-budget")
            object.__setattr__(self, "act_budget", replace(self.act_budget, choices=choices))
        for bits in sorted({b for _, b in self.tensor_a_bits} | set(self.act_budget.choices or () if self.act_budget else ())):
            self.profile.check_bits(self.w_bits, bits)
        if (self.bit_budget or self.layer_w_bits or self.act_budget or self.tensor_a_bits) and self.first_last_8bit:
            raise ConfigError("--first-last-8bit fixes the first and last layer's bits; with a bit budget the "
                              "allocation chooses them: drop one of the two")
        if self.batch is not None and self.batch < 1:
            raise ConfigError(f"--batch must be >= 1, got {self.batch}")
        if self.calibrator not in (None, "minmax", "percentile", "mse"):
            raise ConfigError(f"unknown calibrator {self.calibrator!r}: choose minmax, percentile or mse")
        if not 50.0 < self.percentile <= 100.0:
            raise ConfigError(f"percentile must be in (50, 100], got {self.percentile}")
        if self.low_bit_storage not in ("ort", "native"):
            raise ConfigError(f"unknown low-bit storage {self.low_bit_storage!r}: choose ort or native")
        if self.weight_rounding not in (None, "nearest", "gptq"):
            raise ConfigError(f"unknown weight rounding {self.weight_rounding!r}: choose nearest or gptq")
        if self.weight_rounding == "nearest" and self.reconstruction.enabled:
            raise ConfigError(f"--weight-rounding nearest: --reconstruct {self.reconstruction.method} learns the "
                              "weights' rounding itself (AdaRound); drop --weight-rounding, or give gptq to start "
                              "AdaRound from GPTQ's rounding")
        if self.calib_batch_size < 1 or self.samples_per_tensor < 1024:
            raise ConfigError("calib_batch_size must be >= 1 and samples_per_tensor >= 1024")

    @property
    def weight_bits_used(self) -> tuple[int, ...]:
        """Every weight bit-width the model may hold (for the storage types and the opset)."""
        bits = {self.w_bits, *(b for _, b in self.layer_w_bits)}
        if self.bit_budget is not None:
            bits |= set(self.bit_budget.choices or ())  # filled in by __post_init__
        return tuple(sorted(bits))

    @property
    def layer_activation_bits(self) -> tuple[int, ...]:
        """Every bit-width the model's activations may hold, the network input's aside (the integer rewrites)."""
        bits = {self.a_bits, *(b for _, b in self.tensor_a_bits)}
        if self.act_budget is not None:
            bits |= set(self.act_budget.choices or ())  # filled in by __post_init__
        return tuple(sorted(bits))

    @property
    def activation_bits_used(self) -> tuple[int, ...]:
        """Every activation bit-width the model may hold, the input's included (the storage types)."""
        return tuple(sorted({*self.layer_activation_bits, self.effective_input_bits}))

    @property
    def profile(self) -> TargetProfile:
        return target_profile(self.target)

    @property
    def effective_input_bits(self) -> int:
        return self.profile.input_bits(self.a_bits, self.input_bits)

    @property
    def effective_batch(self) -> int | None:
        """The batch the emitted model fixes (None: dynamic)."""
        return self.batch if self.batch is not None else (1 if self.profile.static_batch else None)

    @property
    def effective_weight_rounding(self) -> str:
        """What rounds the weights: "gptq", "nearest", "adaround" or "adaround from gptq"."""
        if self.reconstruction.enabled:
            return "adaround from gptq" if self.weight_rounding == "gptq" else "adaround"
        return self.weight_rounding or "gptq"

    @property
    def gptq_integers_needed(self) -> bool:
        """Whether GPTQ rounds the weights (as the result, or as AdaRound's start)."""
        return self.effective_weight_rounding in ("gptq", "adaround from gptq")

    @property
    def effective_calibrator(self) -> str:
        """The calibrator's name for weights and reports ("mse" by default; see activation_calibrator)."""
        if self.calibrator is not None:
            return self.calibrator
        return "mse"

    def activation_calibrator(self, bits: int, synthetic: bool) -> str:
        """How the range of an activation tensor of `bits` is chosen: the configured calibrator, else MSE, except
        at 8 bits and more on synthetic calibration data, where the whole observed range is kept (minmax).

        Measured (bench/results/imagenet.md, KL of the W8A8 model's predictions to FP32 on 500 real photographs):
        on 64 DGH images EfficientNet-Lite0 0.046 with MSE against 0.011 with minmax, MobileNetV2 0.160
        against 0.086 (top-1 75.4 against 78.8); on real images MSE stays ahead (0.0041 / 0.020 against
        0.0047 / 0.045). Synthetic images match the BN statistics but not the tails of the real activations,
        and at 8 bits clipping a tail costs far more than the coarser grid."""
        if self.calibrator is not None:
            return self.calibrator
        return "minmax" if synthetic and bits >= 8 else "mse"

    def calibrator_label(self, synthetic: bool) -> str:
        """The activation calibrators used, in one word or two, for summaries."""
        used = sorted({self.activation_calibrator(b, synthetic) for b in self.layer_activation_bits})
        return used[0] if len(used) == 1 else "minmax at 8 bits, mse below"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["effective_calibrator"] = self.effective_calibrator
        data["effective_batch"] = self.effective_batch
        data["effective_weight_rounding"] = self.effective_weight_rounding
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QuantConfig:
        if int(data.get("version", CONFIG_VERSION)) > CONFIG_VERSION:
            raise ConfigError(f"config version {data['version']} is newer than this toolchain reads ({CONFIG_VERSION})")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known - {"effective_calibrator", "effective_batch", "effective_weight_rounding"})
        if unknown:
            raise ConfigError(f"unknown quantizer config keys: {', '.join(unknown)}")
        values = {k: v for k, v in data.items() if k in known}
        if isinstance(values.get("reconstruction"), dict):
            values["reconstruction"] = ReconConfig.from_dict(values["reconstruction"])
        if isinstance(values.get("bit_budget"), dict):
            budget = dict(values["bit_budget"])
            choices = budget.get("choices")
            values["bit_budget"] = BitBudget(**{**budget, "choices": tuple(choices) if choices is not None else None})
        if isinstance(values.get("act_budget"), dict):
            budget = dict(values["act_budget"])
            choices = budget.get("choices")
            values["act_budget"] = ActivationBudget(**{**budget, "choices": tuple(choices) if choices is not None else None})
        for key in ("layer_w_bits", "tensor_a_bits"):
            if key in values:
                values[key] = tuple((str(name), int(bits)) for name, bits in values[key])
        return cls(**values)
