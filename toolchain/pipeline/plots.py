"""The run report's figures (matplotlib, PNG, no screen needed), each from report.json's facts.

Usage:
    files = draw_plots(report, folder, images)    # {"accuracy": "accuracy.png", ...}; a figure without data is left out

Each function draws one figure and returns False when the run has nothing for it (no evaluation data, no
reconstruction, calibration data given as a file): report.md then says so instead of linking a missing image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from toolchain.pipeline.run_report import RunReport

PLOTS = ("accuracy", "layer_sqnr", "reconstruction", "generation", "images", "coverage")


def draw_plots(report: RunReport, folder: Path, images: dict) -> dict[str, str]:
    """Every figure this run has data for, written as FOLDER/NAME.png; returns {name: file name}."""
    import matplotlib  # deferred: matplotlib loads only when this runs (start-up time)

    matplotlib.use("Agg")  # no display; also on machines that have one, so a run never opens a window
    import matplotlib.pyplot as plt  # deferred: matplotlib loads only when this runs (start-up time)

    drawn = {}
    for name in PLOTS:
        figure = plt.figure(figsize=(7.5, 4.2), dpi=110)
        try:
            has_data = _DRAW[name](figure, report, images)
            if has_data:
                figure.tight_layout()
                figure.savefig(folder / f"{name}.png", metadata={"Software": None})  # no version text: same bytes each run
                drawn[name] = f"{name}.png"
        finally:
            plt.close(figure)
    return drawn


def _accuracy(figure, report: RunReport, images: dict) -> bool:
    evaluation = report.evaluation
    if not evaluation:
        return False
    names = ["FP32", *(m.name for m in report.models)]
    values = [100 * evaluation.fp32.top1, *(100 * (m.top1 or 0.0) for m in report.models)]
    axis = figure.add_subplot()
    bars = axis.bar(names, values, color=["#555555", *["#1f77b4"] * len(report.models)])
    axis.bar_label(bars, labels=[f"{v:.2f}" for v in values], padding=2)
    low = min(values)
    axis.set_ylim(max(0.0, low - max(5.0, (100 - low) * 0.5)), 100.5)
    axis.set_ylabel("top-1 %")
    axis.set_title(f"Top-1 on {evaluation.n} images ({evaluation.runtime})")
    return True


def _layer_sqnr(figure, report: RunReport, images: dict) -> bool:
    axis = figure.add_subplot()
    drawn = False
    for model in report.models:
        values = [layer.sqnr_db for layer in model.layers]
        if any(v is not None for v in values):
            axis.plot(range(len(values)), [np.nan if v is None else v for v in values], marker="o", label=model.name)
            drawn = True
    if not drawn:
        return False
    axis.set_xlabel("layer (graph order)")
    axis.set_ylabel("output SQNR against FP32, dB")
    axis.set_title("Per-layer SQNR on the calibration inputs")
    axis.legend()
    axis.grid(alpha=0.3)
    return True


def _reconstruction(figure, report: RunReport, images: dict) -> bool:
    models = [m for m in report.models if m.reconstruction]
    if not models:
        return False
    axis = figure.add_subplot()
    width = 0.8 / (2 * len(models))
    for i, model in enumerate(models):
        units = model.reconstruction
        x = np.arange(len(units))
        before = [u.loss_before.rec for u in units]
        after = [u.loss_after.rec for u in units]
        axis.bar(x + (2 * i) * width, before, width, label=f"{model.name} before", alpha=0.45)
        axis.bar(x + (2 * i + 1) * width, after, width, label=f"{model.name} after")
    longest = max(models, key=lambda m: len(m.reconstruction)).reconstruction
    axis.set_xticks(np.arange(len(longest)) + (len(models) - 0.5) * width,
                    [f"{u.unit} {u.kind}" for u in longest], fontsize=8)
    axis.set_yscale("log")
    axis.set_xlabel("unit")
    axis.set_ylabel("reconstruction loss (MSE, log)")
    axis.set_title("Per-unit reconstruction loss before and after")
    axis.legend(fontsize=8)
    return True


def _generation(figure, report: RunReport, images: dict) -> bool:
    curve = report.calibration.loss_curve or []
    if not curve:
        return False
    axis = figure.add_subplot()
    axis.plot(range(1, len(curve) + 1), curve)
    if min(curve) > 0:
        axis.set_yscale("log")
    axis.set_xlabel("iteration")
    axis.set_ylabel("training loss (mean per image)")
    calibration = report.calibration
    axis.set_title(f"Generation loss: {str(calibration.method).upper()}, {calibration.n} images")
    axis.grid(alpha=0.3)
    return True


def _images(figure, report: RunReport, images: dict) -> bool:
    rows = [(images["synthetic_label"], images["synthetic"])]
    if images.get("real") is not None:
        rows.append(("real", images["real"]))
    columns = 8
    pre = images["preprocessing"]
    for r, (label, batch) in enumerate(rows):
        shown = _displayable(batch[:columns], pre)
        for c, picture in enumerate(shown):
            axis = figure.add_subplot(len(rows), columns, r * columns + c + 1)
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0.0, vmax=1.0)
            axis.set_xticks([])
            axis.set_yticks([])
            if c == 0:
                axis.set_ylabel(label, fontsize=8)
    figure.suptitle("Calibration images" + (" next to real ones" if len(rows) > 1 else ""))
    return True


def _displayable(batch: np.ndarray, pre) -> list[np.ndarray]:
    """Model inputs back to pixels in [0, 1]: undo the normalisation and the channel order."""
    mean = np.asarray(pre.mean, np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(pre.std, np.float32).reshape(1, -1, 1, 1)
    pixels = np.clip(batch * std + mean, 0.0, 1.0)
    if pre.channel_order == "BGR":
        pixels = pixels[:, ::-1]
    return [p[0] if p.shape[0] == 1 else np.transpose(p, (1, 2, 0)) for p in pixels]


def _coverage(figure, report: RunReport, images: dict) -> bool:
    models = report.models
    axis = figure.add_subplot()
    x = np.arange(len(models))
    ops = [m.coverage.ops for m in models]
    macs = [m.coverage.macs or 0.0 for m in models]
    axis.bar(x - 0.2, ops, 0.4, label="ops on integer kernels")
    axis.bar(x + 0.2, macs, 0.4, label="MACs on integer kernels")
    axis.set_xticks(x, [m.name for m in models])
    axis.set_ylim(0, 1.05)
    axis.set_ylabel("fraction (onnxruntime CPU)")
    axis.set_title("Integer coverage in onnxruntime (below 8 bits its CPU kernels emulate in float)")
    axis.legend()
    return True


_DRAW = {"accuracy": _accuracy, "layer_sqnr": _layer_sqnr, "reconstruction": _reconstruction,
         "generation": _generation, "images": _images, "coverage": _coverage}
