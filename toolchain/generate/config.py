"""Settings of synthetic calibration-data generation: one frozen GenerationConfig, three presets per method.

Usage:
    config = preset("default", "dgh")                         # GenerationConfig
    config = replace(config, iterations=50, augment=replace(config.augment, flip=False))   # an ablation
    config.to_dict(); GenerationConfig.from_dict(d)           # the manifest / checkpoint round trip

Every ingredient is a field, so an ablation is one `replace` away. The three optimising methods (dgh,
fdda, bns) share one engine; a method is a preset of these switches (plus, for fdda, labelled images).
Where each preset constant comes from (tags as in docs/methods.md: [V-code] read from the official
code, [R] recalled, unverified; "ours": chosen here):

DGH, paper (ssi-research/DGH `dgh/data_generation.py`, `dgh/default_functions.py`) [V-code]:
    1000 iterations, batch 128 (README commands, `--distill_batch_size`), RAdam lr 16, std factor 10,
    ReduceLROnPlateauWithReset(factor 0.5, patience n_iter/50 = 20, threshold 1e-4 rel, min lr 1e-4),
    flip p=0.5, 3x3 Gaussian smoothing sigma 1.25, border P = 32 at 224 (scaled: P = size // 7, which is
    4 at 32x32 as methods.md section 2.9 suggests), input pseudo-layer on, statistics reused from the
    pre-step augmented forward (official), output loss = the official variant (min-max stretch plus
    hinges on the last BN input's per-image statistics) with factor 3e-7 (the README's ResNet-18 value;
    1e-7 for ResNet-50, 3e-5 for MobileNetV2: it must be re-tuned per model).
DGH, default (ours; measured on ResNet-20, 256 images, judged by pdquant W4A4, seed 0, bench/pdquant.py
    --suite datagen): 200 iterations (100: 79.08 % in 40 s; 200: 79.55 % in 70 s; 400: 79.56 % in 141 s),
    batch 64, smoothing sigma 1.0 (methods.md 2.9: sigma <= 1.0 at 32x32; 0.5 gave 79.51 %), patience
    200/50 = 4, output-stretching weight 3e-7 as the paper (on ResNet-20 this leaves the term about 1e-4 of
    the BN loss; 1e-3, where it is about half, lowered the result to 76.78 %), the rest as the paper preset.
BNS (ZeroQ, kssteven418/ZeroQ `classification/distill_data.py`) [V-code]: Adam lr 0.5, 500 iterations,
    ReduceLROnPlateau(patience 100, factor 0.1 = torch's default, min lr 1e-4), input pseudo-layer
    (mean 0, std 1), mean and std matched, no augmentation, no output loss; batch 32 [R]. Deviation
    (ours): statistics are per batch (the brief's baseline) where ZeroQ matches per-image statistics.
FDDA, paper (zysxmu/FDDA `imagenet_config.hocon`, `trainer_DBNS_CBNS.py`) [V-code]: loss weights
    CE 0.5, BNS 0.2, distorted 0.9, centralised 0.01; distortion stds 0.5 (means) / 1.0 (variances);
    deep half l0 = floor((L + 1) / 2) - 2; generic BNS = MSE of batch mean and variance over all BN
    layers; batch 32 (16 generic + 16 single-class in the paper). The paper trains a generator (Adam
    lr 1e-3, 400 x 200 steps); images optimised directly (methods.md section 7) need a pixel optimiser:
    ours = DGH's (RAdam, plateau schedule) with lr 1.0 (better than 0.25 and as good as 4.0 on ResNet-20
    after 40 iterations) and 1000 iterations, no augmentation.
BNS and FDDA, default (ours): 200 iterations, batch 64 (BNS: plateau patience 20), the rest as paper.
    FDDA's class terms on top of DGH's joint statistics, input pseudo-layer and augmentation scored lower
    under pdquant W4A4 (77.92 % against 78.55 %, seed 0), so the default keeps FDDA's own setting.
cpu (every method; ours): the default with 100 iterations at batch 32, for ImageNet-size models on a few CPU
    cores (ResNet-18 @224: 64 DGH images in 13.8 min on 2 cores, bench/scale.py).
fast (every method; ours): 6 iterations at batch 16, constant lr, checkpoint every 2: for tests.
Not carried over: DGH's fp16 autocast and its clamp of second moments at 65504 (we run in float32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from toolchain.errors import ConfigError

CONFIG_VERSION = 1
METHODS = ("dgh", "fdda", "bns", "gaussian", "real")
OPTIMISING_METHODS = ("dgh", "fdda", "bns")
FDDA_CLASSES = ("all", "present")
PRESETS = ("fast", "cpu", "default", "paper")


@dataclass(frozen=True)
class AugmentConfig:
    """Differentiable view of the images at every step (DGH section 2.3); all off = the images as they are.

    Attributes:
        flip: random horizontal flip, p = 0.5, one draw for the whole batch.
        smoothing_sigma: 3x3 (`smoothing_kernel`) depth-wise Gaussian blur, zero padding; 0 = off.
        smoothing_kernel: odd kernel size of the blur.
        border: extra pixels P: images live on an (H+P)x(W+P) canvas and each step sees a random HxW crop
            (one offset per batch); the result is the centre crop. None = input height // 7 (32 at 224, 4 at 32).
    """

    flip: bool = True
    smoothing_sigma: float = 1.0
    smoothing_kernel: int = 3
    border: int | None = None

    def resolved_border(self, height: int) -> int:
        return height // 7 if self.border is None else self.border


@dataclass(frozen=True)
class OptimConfig:
    """Pixel optimiser: one instance and one plateau scheduler per batch of images.

    Attributes:
        optimizer: "radam" (DGH) or "adam" (ZeroQ).
        lr: initial learning rate (normalised pixel space).
        plateau_patience: steps of that batch without relative improvement `plateau_threshold` before the
            lr is multiplied by `plateau_factor`; None = constant lr. "auto" = iterations // 50 (DGH).
        reset_best: forget the best loss after each reduction (DGH's ReduceLROnPlateauWithReset); False =
            torch's ReduceLROnPlateau.
    """

    optimizer: Literal["radam", "adam"] = "radam"
    lr: float = 16.0
    plateau_patience: int | Literal["auto"] | None = "auto"
    plateau_factor: float = 0.5
    plateau_threshold: float = 1e-4
    min_lr: float = 1e-4
    reset_best: bool = True

    def resolved_patience(self, iterations: int) -> int | None:
        if self.plateau_patience == "auto":
            return max(1, iterations // 50)
        return self.plateau_patience


@dataclass(frozen=True)
class FDDAConfig:
    """FDDA's class-conditional terms (used by method "fdda"; needs labelled real images).

    Attributes:
        per_class: real images per class whose per-image BN statistics are averaged into the class centre.
        ce_weight: weight of CE(T(x), y) with round-robin labels.
        centralised_weight / distorted_weight: BNS-centralised / BNS-distorted losses over the deep layers.
        mean_noise_std / var_noise_std: std of the Gaussian noise added to the centres' means / variances,
            redrawn per class and channel at every step (no clamping: a variance target may be negative).
        deep_start: first BN layer (0-based, graph order) of the deep set; None = floor((L + 1) / 2) - 2.
        classes: "all" (the paper: a centre for every one of the model's classes, and a DataError when the
            real data lacks one) or "present" (only the classes the real data has `per_class` images of get
            centres and synthetic images; for a sample of a large label set, e.g. 500 of ImageNet's 1000).
    """

    per_class: int = 1
    ce_weight: float = 0.5
    centralised_weight: float = 0.01
    distorted_weight: float = 0.9
    mean_noise_std: float = 0.5
    var_noise_std: float = 1.0
    deep_start: int | None = None
    classes: str = "all"

    def resolved_deep_start(self, num_layers: int) -> int:
        start = (num_layers + 1) // 2 - 2 if self.deep_start is None else self.deep_start
        return min(max(start, 0), num_layers - 1)


@dataclass(frozen=True)
class GenerationConfig:
    """Every hyperparameter of one generation run (see the module docstring for the presets).

    Attributes:
        name: the preset it came from ("custom" when built by hand); recorded in the manifest.
        iterations: outer iterations; each visits every batch once (random order), so = steps per image.
        batch_size: images per batch (n is split into ceil(n / batch_size) batches of near-equal size).
        bn_weight: weight of the BN-statistics loss over all BN layers (plus the input pseudo-layer).
        joint_statistics: match the statistics of the whole image set (DGH: per-batch moments stored and
            combined); False = each batch's own statistics (ZeroQ, FDDA's generic BNS).
        second_moment: "std" compares sqrt(var + 1e-6) with sqrt(running_var + 1e-6) (DGH, ZeroQ);
            "var" compares variances (FDDA's MSE of mean and variance).
        std_factor: gamma, weight of the second-moment term against the mean term.
        input_layer: add the image itself as a pseudo-layer with target mean 0, std 1 per channel.
        refresh: after a step, batch j's stored statistics come from "reuse" = the pre-step augmented
            forward (official DGH, free) or "forward" = an extra no-grad forward of the finalised images.
        output_loss: "official" (DGH repo: -(max z - min z) + hinges on the last BN input's per-image
            mean/std), "mct" (Sony MCT: -(max z - min z)), or "none"; z = the graph's output.
        output_weight: lambda_out.
        checkpoint_every: outer iterations between checkpoints (when a checkpoint path is given).
    """

    name: str = "custom"
    iterations: int = 200
    batch_size: int = 64
    bn_weight: float = 1.0
    joint_statistics: bool = True
    second_moment: Literal["std", "var"] = "std"
    std_factor: float = 10.0
    input_layer: bool = True
    refresh: Literal["reuse", "forward"] = "reuse"
    output_loss: Literal["official", "mct", "none"] = "official"
    output_weight: float = 3e-7
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    fdda: FDDAConfig | None = None
    checkpoint_every: int = 10

    def __post_init__(self) -> None:
        _check(self.iterations >= 1, f"iterations must be at least 1, got {self.iterations}")
        _check(self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}")
        _check(self.checkpoint_every >= 1, f"checkpoint_every must be at least 1, got {self.checkpoint_every}")
        _check(self.second_moment in ("std", "var"), f"second_moment must be 'std' or 'var', got {self.second_moment!r}")
        _check(self.refresh in ("reuse", "forward"), f"refresh must be 'reuse' or 'forward', got {self.refresh!r}")
        _check(self.output_loss in ("official", "mct", "none"),
               f"output_loss must be 'official', 'mct' or 'none', got {self.output_loss!r}")
        for name in ("bn_weight", "std_factor", "output_weight"):
            _check(getattr(self, name) >= 0, f"{name} must be >= 0, got {getattr(self, name)}")
        aug, opt = self.augment, self.optim
        _check(aug.smoothing_sigma >= 0, f"smoothing sigma must be >= 0, got {aug.smoothing_sigma}")
        _check(aug.smoothing_kernel >= 1 and aug.smoothing_kernel % 2 == 1,
               f"smoothing kernel must be an odd size >= 1, got {aug.smoothing_kernel}")
        _check(aug.border is None or aug.border >= 0, f"border must be >= 0, got {aug.border}")
        _check(opt.optimizer in ("radam", "adam"), f"optimizer must be 'radam' or 'adam', got {opt.optimizer!r}")
        _check(opt.lr > 0, f"lr must be positive, got {opt.lr}")
        _check(0 < opt.plateau_factor < 1, f"plateau factor must be in (0, 1), got {opt.plateau_factor}")
        _check(opt.plateau_patience in ("auto", None) or (isinstance(opt.plateau_patience, int) and opt.plateau_patience >= 0),
               f"plateau patience must be 'auto', None or an integer >= 0, got {opt.plateau_patience!r}")
        if self.fdda is not None:
            f = self.fdda
            _check(f.per_class >= 1, f"per_class must be at least 1, got {f.per_class}")
            _check(f.classes in FDDA_CLASSES, f"fdda.classes must be one of {', '.join(FDDA_CLASSES)}, got {f.classes!r}")
            for name in ("ce_weight", "centralised_weight", "distorted_weight", "mean_noise_std", "var_noise_std"):
                _check(getattr(f, name) >= 0, f"fdda.{name} must be >= 0, got {getattr(f, name)}")

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["version"] = CONFIG_VERSION
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationConfig:
        data = dict(data)
        version = int(data.pop("version", CONFIG_VERSION))
        _check(version <= CONFIG_VERSION, f"generation config version {version} is newer than this toolchain ({CONFIG_VERSION}): upgrade it")
        try:
            nested = {"augment": AugmentConfig, "optim": OptimConfig, "fdda": FDDAConfig}
            for key, kind in nested.items():
                if isinstance(data.get(key), dict):
                    data[key] = kind(**data[key])
            return cls(**data)
        except TypeError as err:
            known = ", ".join(f.name for f in fields(cls))
            raise ConfigError(f"generation config is malformed ({err}); known keys: {known}") from err

    def without_bookkeeping(self) -> dict[str, Any]:
        """to_dict() minus what does not change the result (name, checkpoint interval): for resume checks."""
        data = self.to_dict()
        data.pop("name")
        data.pop("checkpoint_every")
        return data


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def preset(name: str, method: str) -> GenerationConfig:
    """The `name` preset ("fast", "cpu", "default", "paper") of `method` (see the module docstring)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}")
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    base = {"dgh": _dgh, "fdda": _fdda, "bns": _bns}.get(method, _dgh)(name)
    if name == "cpu":
        base = replace(base, iterations=100, batch_size=32)
    if name == "fast":
        base = replace(base, iterations=6, batch_size=16, checkpoint_every=2,
                       optim=replace(base.optim, plateau_patience=None))
    return replace(base, name=name)


def _dgh(name: str) -> GenerationConfig:
    paper = name == "paper"
    return GenerationConfig(
        iterations=1000 if paper else 200,
        batch_size=128 if paper else 64,
        augment=AugmentConfig(flip=True, smoothing_sigma=1.25 if paper else 1.0, smoothing_kernel=3, border=None),
        optim=OptimConfig(optimizer="radam", lr=16.0, plateau_patience="auto", plateau_factor=0.5, min_lr=1e-4),
    )


def _bns(name: str) -> GenerationConfig:
    paper = name == "paper"
    return GenerationConfig(
        iterations=500 if paper else 200,
        batch_size=32 if paper else 64,
        joint_statistics=False, second_moment="std", std_factor=1.0, input_layer=True,
        output_loss="none", output_weight=0.0,
        augment=AugmentConfig(flip=False, smoothing_sigma=0.0, border=0),
        optim=OptimConfig(optimizer="adam", lr=0.5, plateau_patience=100 if paper else 20, plateau_factor=0.1,
                          min_lr=1e-4, reset_best=False),
    )


def _fdda(name: str) -> GenerationConfig:
    paper = name == "paper"
    return GenerationConfig(
        iterations=1000 if paper else 200,
        batch_size=32 if paper else 64,
        bn_weight=0.2, joint_statistics=False, second_moment="var", std_factor=1.0, input_layer=False,
        output_loss="none", output_weight=0.0,
        augment=AugmentConfig(flip=False, smoothing_sigma=0.0, border=0),
        optim=OptimConfig(optimizer="radam", lr=1.0, plateau_patience="auto", plateau_factor=0.5, min_lr=1e-4),
        fdda=FDDAConfig(),
    )
