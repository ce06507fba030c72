"""Kernels that move data without computing on it, and resampling: Flatten, Reshape, Transpose, Squeeze,
Unsqueeze, Concat, Split, Slice, Pad, Expand, Tile, Resize."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch.nn import functional as F

from toolchain.executor.ops.common import INT64_MAX, INT64_MIN, normalise_axes, onnx_to_torch_pads, scalar
from toolchain.executor.registry import Kernel, NodeContext, register


@register("Flatten")
def _flatten(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis", 1))
    if axis == 1:
        return lambda x: x.flatten(1) if x.dim() > 1 else x.reshape(1, -1)

    def flatten(x: torch.Tensor) -> torch.Tensor:
        a = axis + x.dim() if axis < 0 else axis
        return x.reshape(math.prod(x.shape[:a]), math.prod(x.shape[a:]))

    return flatten


def _resolve_shape(x: torch.Tensor, shape: Sequence[int], allowzero: bool) -> list[int]:
    """ONNX Reshape target: 0 copies the input's dim (unless allowzero), -1 is left for torch to infer."""
    if allowzero:
        return list(shape)
    return [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]


@register("Reshape", static=(1,))
def _reshape(ctx: NodeContext) -> Kernel:
    allowzero = bool(ctx.attr("allowzero", 0))
    shape = ctx.const_ints(1)
    if shape is None:
        return lambda x, s: x.reshape(_resolve_shape(x, s.tolist(), allowzero))
    if allowzero or 0 not in shape:
        fixed = tuple(shape)
        return lambda x, *_: x.reshape(fixed)
    return lambda x, *_: x.reshape(_resolve_shape(x, shape, allowzero))


@register("Transpose")
def _transpose(ctx: NodeContext) -> Kernel:
    perm = ctx.attr("perm")
    if perm is None:
        return lambda x: x.permute(tuple(reversed(range(x.dim()))))
    dims = tuple(perm)
    return lambda x: x.permute(dims)


def _axes_input_or_attr(ctx: NodeContext, index: int, since: int) -> tuple[list[int] | None, bool]:
    """(axes, known): axes from the attribute (before opset `since`) or from input `index`."""
    if ctx.opset < since:
        return ctx.attr("axes"), True
    if not ctx.has_input(index):
        return None, True
    axes = ctx.const_ints(index)
    return axes, axes is not None


@register("Squeeze", static=(1,))
def _squeeze(ctx: NodeContext) -> Kernel:
    axes, known = _axes_input_or_attr(ctx, 1, since=13)
    if not known:
        return lambda x, a: x.squeeze(tuple(a.tolist()))
    if axes is None:
        return lambda x, *_: x.squeeze()
    dims = tuple(axes)
    return lambda x, *_: x.squeeze(dims)


def _unsqueeze_to(x: torch.Tensor, axes: Sequence[int]) -> torch.Tensor:
    for axis in sorted(normalise_axes(axes, x.dim() + len(axes))):
        x = x.unsqueeze(axis)
    return x


@register("Unsqueeze", static=(1,))
def _unsqueeze(ctx: NodeContext) -> Kernel:
    axes, known = _axes_input_or_attr(ctx, 1, since=13)
    if not known:
        return lambda x, a: _unsqueeze_to(x, a.tolist())
    if axes is None:
        raise ctx.error("no axes given; Unsqueeze needs the axes to insert")
    if all(a >= 0 for a in axes):
        dims = sorted(axes)
        if len(dims) == 1:
            dim = dims[0]
            return lambda x, *_: x.unsqueeze(dim)
    return lambda x, *_: _unsqueeze_to(x, axes)


@register("Concat")
def _concat(ctx: NodeContext) -> Kernel:
    axis = int(ctx.attr("axis"))
    return lambda *xs: torch.cat(xs, axis)


def _slice_index(rank: int | None, starts: Sequence[int], ends: Sequence[int], axes: Sequence[int] | None,
                 steps: Sequence[int] | None) -> tuple[slice, ...]:
    """Python index tuple for ONNX Slice; positive steps only. Out-of-range ends clamp, as in Python."""
    if axes is None:
        axes = list(range(len(starts)))
    if steps is None:
        steps = [1] * len(starts)
    axes = normalise_axes(axes, rank) if rank is not None else list(axes)
    index = [slice(None)] * (max(axes) + 1 if axes else 0)
    for axis, start, end, step in zip(axes, starts, ends, steps):
        # INT64 max/min mean "to the end"; None avoids torch handling huge Python ints.
        stop = None if end >= INT64_MAX or (end <= INT64_MIN) else end
        index[axis] = slice(start, stop, step)
    return tuple(index)


@register("Slice", static=(1, 2, 3, 4))
def _slice(ctx: NodeContext) -> Kernel:
    if ctx.opset < 10:
        raise ctx.error(f"opset {ctx.opset} Slice (attributes) is not supported; use opset >= 10")
    values = [ctx.const_ints(i) if ctx.has_input(i) else None for i in range(1, 5)]
    known = all(v is not None or not ctx.has_input(i + 1) for i, v in enumerate(values))
    if not known:

        def dynamic_slice(x: torch.Tensor, starts: torch.Tensor, ends: torch.Tensor,
                          axes: torch.Tensor | None = None, steps: torch.Tensor | None = None) -> torch.Tensor:
            steps_list = None if steps is None else steps.tolist()
            if steps_list is not None and any(s < 0 for s in steps_list):
                raise ctx.error("negative steps are not supported; reverse with a positive-step Slice and Flip")
            axes_list = None if axes is None else axes.tolist()
            return x[_slice_index(x.dim(), starts.tolist(), ends.tolist(), axes_list, steps_list)]

        return dynamic_slice
    starts, ends, axes, steps = values
    if starts is None or ends is None:
        raise ctx.error("starts and ends are required inputs")
    if steps is not None and any(s <= 0 for s in steps):
        raise ctx.error(f"steps={steps}: only positive steps are supported")
    if axes is None or all(a >= 0 for a in axes):
        index = _slice_index(None, starts, ends, axes, steps)
        return lambda x, *_: x[index]
    return lambda x, *_: x[_slice_index(x.dim(), starts, ends, axes, steps)]


@register("Pad", static=(1, 2, 3))
def _pad(ctx: NodeContext) -> Kernel:
    mode = ctx.attr("mode", "constant")
    if mode != "constant":
        raise ctx.error(f"mode={mode!r} is not supported; only mode='constant' is")
    if ctx.opset < 11:
        pads, value, axes = ctx.attr("pads"), float(ctx.attr("value", 0.0)), None
    else:
        pads, axes = ctx.const_ints(1), ctx.const_ints(3) if ctx.has_input(3) else None
        fill = ctx.const(2) if ctx.has_input(2) else None
        value = scalar(fill) if fill is not None else 0.0
        if pads is None or (ctx.has_input(2) and fill is None) or (ctx.has_input(3) and axes is None):
            return _dynamic_pad

    if axes is None:
        torch_pads = onnx_to_torch_pads(pads)
        return lambda x, *_: F.pad(x, torch_pads, value=value)
    return lambda x, *_: F.pad(x, onnx_to_torch_pads(_full_pads(x.dim(), pads, axes)), value=value)


def _full_pads(rank: int, pads: Sequence[int], axes: Sequence[int]) -> list[int]:
    """Pads given for `axes` only -> ONNX pads over every dim."""
    full = [0] * (2 * rank)
    for i, axis in enumerate(normalise_axes(axes, rank)):
        full[axis], full[axis + rank] = pads[i], pads[i + len(axes)]
    return full


def _dynamic_pad(x: torch.Tensor, pads: torch.Tensor, value: torch.Tensor | None = None,
                 axes: torch.Tensor | None = None) -> torch.Tensor:
    pad_list = pads.tolist()
    if axes is not None:
        pad_list = _full_pads(x.dim(), pad_list, axes.tolist())
    return F.pad(x, onnx_to_torch_pads(pad_list), value=0.0 if value is None else float(value))




@register("Split", static=(1,))
def _split(ctx: NodeContext) -> Kernel:
    axis, parts = int(ctx.attr("axis", 0)), ctx.num_outputs
    if ctx.opset < 13:
        sizes = ctx.attr("split")
    elif ctx.has_input(1):
        sizes = ctx.const_ints(1)
        if sizes is None:
            return lambda x, s: _outputs(torch.split(x, s.tolist(), axis))
    else:
        sizes = None
    if sizes is None:  # equal parts; from opset 18 the last may be smaller (ceil(dim / parts) each)
        return lambda x, *_: _outputs(torch.split(x, -(-x.shape[axis] // parts), axis))
    sizes = list(sizes)
    return lambda x, *_: _outputs(torch.split(x, sizes, axis))


def _outputs(parts: Sequence[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
    return parts[0] if len(parts) == 1 else tuple(parts)


@register("Expand", static=(1,))
def _expand(ctx: NodeContext) -> Kernel:
    shape = ctx.const_ints(1)
    if shape is not None:
        static = tuple(shape)
        return lambda x, *_: x.expand(torch.broadcast_shapes(tuple(x.shape), static))  # ONNX Expand broadcasts both ways

    def expand(x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return x.expand(torch.broadcast_shapes(tuple(x.shape), tuple(s.tolist())))

    return expand


@register("Tile", static=(1,))
def _tile(ctx: NodeContext) -> Kernel:
    repeats = ctx.const_ints(1)
    if repeats is None:
        return lambda x, r: x.repeat(r.tolist())
    return lambda x, *_: x.repeat(repeats)


# (mode, coordinate_transformation_mode, nearest_mode) -> F.interpolate's mode and align_corners
_RESIZE_MODES = {
    ("nearest", "asymmetric", "floor"): ("nearest", None),
    ("nearest", "half_pixel", "round_prefer_ceil"): ("nearest-exact", None),
    ("nearest", "pytorch_half_pixel", "round_prefer_ceil"): ("nearest-exact", None),
    ("linear", "half_pixel", None): ("linear", False),
    ("linear", "pytorch_half_pixel", None): ("linear", False),
    ("linear", "align_corners", None): ("linear", True),
    ("cubic", "half_pixel", None): ("cubic", False),
    ("cubic", "pytorch_half_pixel", None): ("cubic", False),
    ("cubic", "align_corners", None): ("cubic", True),
}
_TORCH_RESAMPLING = {("linear", 1): "linear", ("linear", 2): "bilinear", ("linear", 3): "trilinear", ("cubic", 2): "bicubic"}


@register("Resize", static=(1, 2, 3))
def _resize(ctx: NodeContext) -> Kernel:
    mode = ctx.attr("mode", "nearest")
    transform = ctx.attr("coordinate_transformation_mode", "half_pixel")
    nearest = ctx.attr("nearest_mode", "round_prefer_floor") if mode == "nearest" else None
    key = (mode, transform, nearest)
    if key not in _RESIZE_MODES:
        raise ctx.error(f"mode={mode!r}, coordinate_transformation_mode={transform!r}"
                        + (f", nearest_mode={nearest!r}" if nearest else "") + " is not supported; supported: "
                        + "; ".join(", ".join(k for k in combo if k) for combo in _RESIZE_MODES))
    if mode == "cubic" and (float(ctx.attr("cubic_coeff_a", -0.75)) != -0.75 or ctx.attr("exclude_outside", 0)):
        raise ctx.error("cubic resizing is supported with cubic_coeff_a=-0.75 and exclude_outside=0 (torch's bicubic) only")
    if ctx.attr("antialias", 0) or ctx.attr("axes") is not None:
        raise ctx.error("antialias and axes are not supported; resize all dims without antialiasing")
    interpolation, align_corners = _RESIZE_MODES[key]
    scales = ctx.const(2) if ctx.has_input(2) else None
    sizes = ctx.const_ints(3) if ctx.has_input(3) else None
    if (ctx.has_input(2) and scales is None) or (ctx.has_input(3) and sizes is None):
        raise ctx.error("scales or sizes are computed at run time; they must be initializers or Constants")
    scale_factors = [float(s) for s in scales.reshape(-1)] if scales is not None and scales.size else None
    if scale_factors is None and sizes is None:
        raise ctx.error("neither scales nor sizes is given; Resize needs one of them")
    spatial_sizes = list(sizes[2:]) if sizes is not None else []  # read only without scales, when sizes are given

    def resize(x: torch.Tensor, *_: torch.Tensor | None) -> torch.Tensor:
        if (scale_factors is not None and scale_factors[:2] != [1.0, 1.0]) or (sizes is not None and list(sizes[:2]) != list(x.shape[:2])):
            raise ctx.error("only the spatial dims (2 and after) can be resized; batch and channels must keep their size")
        rank = x.dim() - 2
        torch_mode = interpolation if interpolation.startswith("nearest") else _TORCH_RESAMPLING.get((interpolation, rank))
        if torch_mode is None:
            raise ctx.error(f"{interpolation} resizing of {rank} spatial dims is not supported")
        extra = {} if align_corners is None else {"align_corners": align_corners}
        if scale_factors is not None:
            # The given scales, not out/in, map the coordinates (as ONNX does when scales are given).
            return F.interpolate(x, scale_factor=scale_factors[2:], mode=torch_mode, recompute_scale_factor=False, **extra)
        return F.interpolate(x, size=spatial_sizes, mode=torch_mode, **extra)

    return resize
