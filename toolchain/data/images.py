"""Labelled image data for evaluation and calibration: folders, tar archives and .npz files.

Usage:
    data = open_images("../shared/datasets/cifar10-test-jpg.tar.gz", pre, limit=500, seed=0)
    for inputs, labels in data.batches(256):    # float32 NCHW (pre.apply'd), int64 class ids
        ...
    data.images, data.labels                    # raw uint8 NHWC at pre.input_size, int64 (N,)

Accepted sources:
    DIR/<class>/<image>             an ImageFolder tree (one wrapper folder, DIR/test/<class>/..., is fine)
    X.tar, X.tar.gz, X.tgz          such a tree in an archive, streamed (nothing is extracted to disk)
    X.npz                           `images` uint8 (N, H, W, C) or (N, H, W), `labels` int (N,),
                                    optional `class_names` (labels then index into it)

Labels are the model's class ids: when `pre.class_names` is known, class folders are matched to it by
name (a subset of the model's classes is fine); otherwise the sorted folder names are the classes.
Images of another size are resized (shorter side to input_size / crop_fraction, bilinear) and
centre-cropped. Every image is decoded once, up front, at the model's input size: 10,000 CIFAR images
are 30 MB; for ImageNet-sized sets pass a `limit`.
"""

from __future__ import annotations

import io
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image

from toolchain.errors import ConfigError, DataError
from toolchain.onnxio.preprocessing import Preprocessing

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".pgm", ".tif", ".tiff")
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz")
LAYOUT_HINT = "<class>/<image>.jpg"


@dataclass(frozen=True, eq=False)
class ImageSet:
    """Decoded, labelled images, in a deterministic order (sorted by path, or the .npz's order).

    Attributes:
        images: uint8 (N, H, W, C) at pre.input_size, RGB (or L when the model has one channel).
        labels: int64 (N,) model class ids.
        class_names: the name of each class id (the model's, else the dataset's sorted folder names).
        names: where each image came from (file path or archive member), for messages.
        pre: the preprocessing that `batches` applies.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    names: tuple[str, ...]
    pre: Preprocessing

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        return self.batches()

    def batches(self, batch_size: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(float32 NCHW model inputs, int64 labels) in order; the last batch may be smaller."""
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            stop = start + batch_size
            yield self.pre.apply(self.images[start:stop]), self.labels[start:stop]


def open_images(path: str | os.PathLike[str], pre: Preprocessing, limit: int | None = None, seed: int | None = None) -> ImageSet:
    """Read a folder, archive or .npz (see the module docstring); `limit` images, a seeded random sample
    when `seed` is given, else the first `limit` in order."""
    path = Path(path)
    if limit is not None and limit < 1:
        raise ConfigError(f"limit must be at least 1, got {limit}")
    if pre.num_channels not in (1, 3):
        raise DataError(f"the model takes {pre.num_channels} input channels; images can be read as 1 (L) or 3 (RGB) only")
    if not path.exists():
        raise DataError(f"{path}: no such file or directory; give an image folder ({LAYOUT_HINT}), a .tar/.tar.gz of one, or an .npz")
    if path.is_dir():
        return _from_tree(path, _scan_folder(path), pre, limit, seed)
    if path.name.lower().endswith(ARCHIVE_SUFFIXES):
        return _from_tree(path, _scan_archive(path), pre, limit, seed)
    if path.suffix.lower() == ".npz":
        return _from_npz(path, pre, limit, seed)
    raise DataError(f"{path}: unsupported data file; give an image folder ({LAYOUT_HINT}), a .tar/.tar.gz/.tgz of one, or an .npz")


# --- ImageFolder trees (directory or archive) ---------------------------------------------------------------

# An entry is (path parts relative to the root, a file to open or the bytes already read, name for messages).
_Entry = tuple[tuple[str, ...], Path | bytes, str]


def _is_image(parts: Sequence[str]) -> bool:
    # Hidden files and macOS archive debris (__MACOSX/, ._x.jpg) are not part of the dataset.
    if any(p.startswith(".") or p == "__MACOSX" for p in parts):
        return False
    return parts[-1].lower().endswith(IMAGE_SUFFIXES)


def _scan_folder(root: Path) -> list[_Entry]:
    entries: list[_Entry] = []
    for folder, _, files in os.walk(root, followlinks=True):
        rel = Path(folder).relative_to(root).parts
        for file in files:
            parts = (*rel, file)
            if _is_image(parts):
                entries.append((parts, Path(folder, file), str(Path(folder, file))))
    return entries


def _scan_archive(path: Path) -> list[_Entry]:
    # Stream mode reads the archive once, front to back: the compressed image files (a few MB for
    # CIFAR) are kept in memory so they can be decoded in sorted order afterwards.
    entries: list[_Entry] = []
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                parts = tuple(p for p in PurePosixPath(member.name).parts if p not in ("/", ".", ""))
                data = archive.extractfile(member) if member.isfile() and parts and _is_image(parts) else None
                if data is not None:  # a regular file member always has its data
                    entries.append((parts, data.read(), f"{path}:{member.name}"))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as err:
        raise DataError(f"{path}: cannot read the archive ({err}); check that it is a complete .tar or .tar.gz") from err
    return entries


def _class_of(root: Path, entries: list[_Entry]) -> list[str]:
    """The class folder of each entry: parts[0] for root/<class>/<image>, parts[1] under one wrapper folder."""
    if not entries:
        raise DataError(f"no images found in {root}: expected {root}/{LAYOUT_HINT}")
    depths = {len(parts) for parts, _, _ in entries}
    tops = sorted({parts[0] for parts, _, _ in entries})
    if depths == {2}:
        return [parts[0] for parts, _, _ in entries]
    if depths == {3} and len(tops) == 1:
        return [parts[1] for parts, _, _ in entries]
    if depths == {3}:
        raise DataError(f"{root} holds several top-level folders ({', '.join(tops)}): point at one of them, laid out as {LAYOUT_HINT}")
    odd = next(name for parts, _, name in entries if len(parts) != 2)
    raise DataError(f"{root}: images must sit in one folder per class, as {root}/{LAYOUT_HINT}; found {odd}")


def _from_tree(root: Path, entries: list[_Entry], pre: Preprocessing, limit: int | None, seed: int | None) -> ImageSet:
    classes = _class_of(root, entries)
    order = sorted(range(len(entries)), key=lambda i: entries[i][0])
    class_ids, class_names = _class_ids(root, sorted(set(classes)), pre)
    chosen = [order[i] for i in _sample(len(order), limit, seed)]
    images = np.empty((len(chosen), *pre.input_size, pre.num_channels), np.uint8)
    for row, i in enumerate(chosen):
        source, name = entries[i][1], entries[i][2]
        images[row] = _decode(io.BytesIO(source) if isinstance(source, bytes) else source, name, pre)
    labels = np.array([class_ids[classes[i]] for i in chosen], np.int64)
    return ImageSet(images, labels, class_names, tuple(entries[i][2] for i in chosen), pre)


def _class_ids(source: Path, folders: Sequence[str], pre: Preprocessing) -> tuple[dict[str, int], tuple[str, ...]]:
    """Dataset class name -> model class id, and the names of the model's class ids."""
    if pre.class_names is None:
        return {name: i for i, name in enumerate(folders)}, tuple(folders)
    known = {name: i for i, name in enumerate(pre.class_names)}
    unknown = [name for name in folders if name not in known]
    if unknown:
        shown = ", ".join(pre.class_names[:20]) + (f", ... ({len(pre.class_names)} in all)" if len(pre.class_names) > 20 else "")
        raise DataError(
            f"{source}: classes {', '.join(unknown)} are not classes of the model ({shown}): rename or remove them"
        )
    return {name: known[name] for name in folders}, pre.class_names


def _sample(n: int, limit: int | None, seed: int | None) -> np.ndarray:
    """Indices (ascending) of `limit` of n items: a seeded random sample, or the first `limit`."""
    if limit is None or limit >= n:
        return np.arange(n)
    if seed is None:
        return np.arange(limit)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# --- decoding and resizing ----------------------------------------------------------------------------------


def _decode(source: Path | io.BytesIO, name: str, pre: Preprocessing) -> np.ndarray:
    try:
        with Image.open(source) as image:
            return _fit(image, pre)
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        raise DataError(f"{name}: cannot decode the image ({err}); replace or remove it") from err


def _fit(image: Image.Image, pre: Preprocessing) -> np.ndarray:
    """A PIL image -> uint8 (H, W, C) at pre.input_size: convert mode, resize shorter side, centre-crop."""
    mode = "L" if pre.num_channels == 1 else "RGB"
    if image.mode != mode:
        image = image.convert(mode)
    height, width = pre.input_size
    if image.size != (width, height):
        # Scale so the image covers input_size / crop_fraction on both axes (for a square input that is
        # "shorter side to size / crop_fraction"), then cut the centre input_size window.
        scale = max(height / pre.crop_fraction / image.height, width / pre.crop_fraction / image.width)
        new_w, new_h = max(width, round(image.width * scale)), max(height, round(image.height * scale))
        image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = round((new_w - width) / 2), round((new_h - height) / 2)
        image = image.crop((left, top, left + width, top + height))
    pixels = np.asarray(image, dtype=np.uint8)
    return pixels[..., None] if pixels.ndim == 2 else pixels


# --- .npz -----------------------------------------------------------------------------------------------------


_NPZ_ERRORS = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, TypeError, AttributeError)


def _npz_error(path: Path, what: str, hint: str, err: Exception) -> DataError:
    # numpy raises all of _NPZ_ERRORS for damaged archives; an object array needs pickle, which is never allowed
    reason = "it holds Python objects, which are never unpickled" if "pickle" in str(err) else f"{type(err).__name__}: {err}"
    return DataError(f"cannot read {what} {path} ({reason}); {hint}")


def _open_npz(path: Path, what: str, hint: str):
    """np.load of an .npz whose first bytes say it is one (a zip archive); DataError otherwise."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as err:
        raise DataError(f"cannot read {what} {path} ({err.strerror}); {hint}") from err
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} is a single .npy array, not an .npz archive; {hint}")
    if not magic.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        state = "empty" if not magic else "not a zip archive, which an .npz is"
        raise DataError(f"cannot read {what} {path}: the file is {state}; {hint}")
    try:
        return np.load(path, allow_pickle=False)
    except _NPZ_ERRORS as err:
        raise _npz_error(path, what, hint, err) from err


def npz_keys(path: str | Path, what: str, hint: str) -> list[str]:
    """The array names of an .npz, without reading the arrays."""
    with _open_npz(Path(path), what, hint) as data:
        return list(data.files)


def read_npz(path: str | Path, what: str, hint: str) -> dict[str, np.ndarray]:
    """Every array of an .npz (no pickles); DataError naming the file, what it was meant to be and `hint` otherwise."""
    path = Path(path)
    with _open_npz(path, what, hint) as data:
        try:
            return {key: data[key] for key in data.files}
        except _NPZ_ERRORS as err:
            raise _npz_error(path, what, hint, err) from err


def _from_npz(path: Path, pre: Preprocessing, limit: int | None, seed: int | None) -> ImageSet:
    hint = "save one with np.savez(path, images=uint8 (N, H, W, C), labels=int (N,), class_names=...)"
    arrays = read_npz(path, "the image .npz", hint)
    missing = [key for key in ("images", "labels") if key not in arrays]
    if missing:
        raise DataError(f"{path}: no {' or '.join(repr(k) for k in missing)} array (it has {', '.join(arrays) or 'none'}); {hint}")
    images, labels = arrays["images"], arrays["labels"]
    if len(images) == 0:
        raise DataError(f"no images found in {path}: its 'images' array is empty; {hint}")
    if images.ndim == 3:
        images = images[..., None]
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise DataError(
            f"{path}: 'images' is {images.dtype} of shape {images.shape}, expected uint8 (N, H, W, C) with C = 1, 3 or 4; {hint}"
        )
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype, np.integer):
        raise DataError(f"{path}: 'labels' is {labels.dtype} of shape {labels.shape}, expected {len(images)} integers; {hint}")
    labels = labels.astype(np.int64)
    # Labels index the file's own class_names when it has them, else the model's classes directly.
    if "class_names" in arrays:
        own = tuple(str(name) for name in arrays["class_names"].tolist())
    else:
        own = pre.class_names or tuple(str(i) for i in range(int(labels.max()) + 1))
    if labels.min() < 0 or labels.max() >= len(own):
        raise DataError(
            f"{path}: labels go from {labels.min()} to {labels.max()} but there are {len(own)} classes; fix the labels or class_names"
        )
    class_ids, class_names = _class_ids(path, own, pre)
    labels = np.array([class_ids[name] for name in own], np.int64)[labels]
    chosen = _sample(len(images), limit, seed)
    images, labels = images[chosen], labels[chosen]
    if images.shape[1:] != (*pre.input_size, pre.num_channels):
        # Same route as image files, so an .npz and the folder it was made from give the same pixels.
        images = np.stack([_fit(Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img), pre) for img in images])
    names = tuple(f"{path}[{i}]" for i in chosen)
    return ImageSet(np.ascontiguousarray(images), labels, class_names, names, pre)
