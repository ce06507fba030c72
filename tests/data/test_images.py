"""Image data loading: folders, archives and .npz files, class mapping by name, resizing, sampling, errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from toolchain.data.images import open_images
from toolchain.errors import ConfigError, DataError
from toolchain.onnxio.preprocessing import CIFAR10_CLASSES, Preprocessing

PRE = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), input_size=(8, 8))
NAMED = PRE.with_overrides(class_names=("cat", "dog", "fox", "owl"))


def _pixels(seed: int, size: tuple[int, int] = (8, 8), channels: int = 3) -> np.ndarray:
    shape = (*size, channels) if channels > 1 else size
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _tree(root: Path, counts: dict[str, int], suffix: str = ".png") -> dict[str, np.ndarray]:
    """root/<class>/<i>.png with random pixels; returns relative path -> pixels (PNG is lossless)."""
    written = {}
    for c, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = _pixels(100 * c + i)
            Image.fromarray(pixels).save(root / name / f"{i}{suffix}")
            written[f"{name}/{i}{suffix}"] = pixels
    return written


def _archive(tree: Path, out: Path, arcname: str = "test") -> Path:
    with tarfile.open(out, "w:gz" if out.name.endswith(("gz", "tgz")) else "w") as tar:
        tar.add(tree, arcname=arcname)
    return out


def test_folder_labels_follow_sorted_class_folders(tmp_path: Path) -> None:
    """Without model class names, sorted folder names are the classes and images come sorted by path."""
    written = _tree(tmp_path, {"dog": 2, "cat": 3})
    data = open_images(tmp_path, PRE)
    assert data.class_names == ("cat", "dog")
    assert data.labels.tolist() == [0, 0, 0, 1, 1] and data.labels.dtype == np.int64
    assert data.images.shape == (5, 8, 8, 3) and data.images.dtype == np.uint8
    assert [Path(n).relative_to(tmp_path).as_posix() for n in data.names] == sorted(written)
    for name, image in zip(data.names, data.images):
        np.testing.assert_array_equal(image, written[Path(name).relative_to(tmp_path).as_posix()])


def test_folder_with_one_wrapper_directory_is_accepted(tmp_path: Path) -> None:
    """root/test/<class>/<image> reads like root/<class>/<image>."""
    _tree(tmp_path / "test", {"cat": 1, "dog": 1})
    data = open_images(tmp_path, PRE)
    assert data.class_names == ("cat", "dog") and data.labels.tolist() == [0, 1]


@pytest.mark.parametrize("name", ["data.tar.gz", "data.tgz", "data.tar"])
def test_archive_reads_like_the_folder(tmp_path: Path, name: str) -> None:
    """A .tar/.tar.gz/.tgz of an ImageFolder tree (with a wrapper folder) gives the folder's images and labels."""
    _tree(tmp_path / "tree", {"dog": 2, "cat": 2, "owl": 1})
    folder = open_images(tmp_path / "tree", NAMED)
    archive = open_images(_archive(tmp_path / "tree", tmp_path / name), NAMED)
    np.testing.assert_array_equal(archive.images, folder.images)
    np.testing.assert_array_equal(archive.labels, folder.labels)
    assert archive.names[0].endswith(f"{name}:test/cat/0.png")


def test_archive_skips_non_images_and_macos_debris(tmp_path: Path) -> None:
    """Archive members that are not images (README, __MACOSX/, ._x.png) are ignored."""
    _tree(tmp_path / "tree", {"cat": 1})
    (tmp_path / "tree" / "README.txt").write_text("hi")
    (tmp_path / "tree" / "cat" / "._0.png").write_bytes(b"\0\5\x16\7")
    out = _archive(tmp_path / "tree", tmp_path / "a.tar.gz")
    assert len(open_images(out, PRE)) == 1


def test_classes_map_to_model_class_ids_by_name(tmp_path: Path) -> None:
    """With model class names, folders map to the model's class index by name; a subset of classes is fine."""
    _tree(tmp_path, {"owl": 1, "dog": 1})
    data = open_images(tmp_path, NAMED)
    assert data.labels.tolist() == [1, 3]
    assert data.class_names == NAMED.class_names


def test_unknown_class_folder_is_an_error(tmp_path: Path) -> None:
    """A class folder the model does not know raises DataError naming it and listing the model's classes."""
    _tree(tmp_path, {"cat": 1, "zebra": 1})
    with pytest.raises(DataError, match=r"classes zebra are not classes of the model \(cat, dog, fox, owl\)"):
        open_images(tmp_path, NAMED)


def test_other_sizes_are_resized_and_centre_cropped(tmp_path: Path) -> None:
    """A wide image is resized (shorter side to size / crop_fraction) and centre-cropped; grey becomes RGB."""
    stripes = np.zeros((32, 192, 3), np.uint8)
    stripes[:, :64, 0] = stripes[:, 64:128, 1] = stripes[:, 128:, 2] = 255  # red | green | blue
    (tmp_path / "a").mkdir()
    Image.fromarray(stripes).save(tmp_path / "a" / "wide.png")
    Image.fromarray(np.full((5, 7), 77, np.uint8)).save(tmp_path / "a" / "grey.png")
    for crop in (1.0, 0.5):
        data = open_images(tmp_path, PRE.with_overrides(input_size=(16, 16), crop_fraction=crop))
        grey, wide = data.images
        assert data.images.shape == (2, 16, 16, 3)
        assert (wide == [0, 255, 0]).all()  # only the middle (green) third survives the centre crop
        assert (grey == 77).all()


def test_single_channel_model_reads_images_as_grey(tmp_path: Path) -> None:
    """For a one-channel model, RGB images are converted to L and come out (N, H, W, 1)."""
    _tree(tmp_path, {"a": 2})
    data = open_images(tmp_path, Preprocessing(mean=(0.5,), std=(0.5,), input_size=(8, 8)))
    assert data.images.shape == (2, 8, 8, 1)
    inputs, _ = next(data.batches())
    assert inputs.shape == (2, 1, 8, 8)


def test_limit_with_seed_is_a_reproducible_sample(tmp_path: Path) -> None:
    """limit+seed draws the same random sample every time; without a seed, the first `limit` in sorted order."""
    _tree(tmp_path, {"cat": 10, "dog": 10})
    first = open_images(tmp_path, PRE, limit=5, seed=1)
    again = open_images(tmp_path, PRE, limit=5, seed=1)
    other = open_images(tmp_path, PRE, limit=5, seed=2)
    assert first.names == again.names and list(first.names) == sorted(first.names)
    np.testing.assert_array_equal(first.images, again.images)
    assert first.names != other.names
    head = open_images(tmp_path, PRE, limit=5)
    assert head.names == open_images(tmp_path, PRE).names[:5]
    assert len(open_images(tmp_path, PRE, limit=100, seed=0)) == 20
    with pytest.raises(ConfigError):
        open_images(tmp_path, PRE, limit=0)


def test_batches_are_preprocessed_nchw_with_int64_labels(tmp_path: Path) -> None:
    """Iterating gives (float32 NCHW = pre.apply(images), int64 labels) batches covering every image once."""
    _tree(tmp_path, {"cat": 3, "dog": 4})
    data = open_images(tmp_path, PRE)
    batches = list(data.batches(3))
    assert [len(labels) for _, labels in batches] == [3, 3, 1]
    inputs = np.concatenate([x for x, _ in batches])
    assert inputs.dtype == np.float32 and inputs.shape == (7, 3, 8, 8)
    np.testing.assert_array_equal(inputs, PRE.apply(data.images))
    assert all(labels.dtype == np.int64 for _, labels in data)


def test_npz_with_class_names_maps_by_name(tmp_path: Path) -> None:
    """An .npz's labels index its own class_names, which are mapped to the model's classes by name."""
    images = np.stack([_pixels(i) for i in range(3)])
    np.savez(tmp_path / "d.npz", images=images, labels=np.array([0, 1, 1]), class_names=np.array(["owl", "cat"]))
    data = open_images(tmp_path / "d.npz", NAMED)
    assert data.labels.tolist() == [3, 0, 0]
    np.testing.assert_array_equal(data.images, images)


def test_npz_grey_images_of_another_size_are_resized(tmp_path: Path) -> None:
    """(N, H, W) uint8 images in an .npz are read as one channel and resized like image files."""
    np.savez(tmp_path / "d.npz", images=np.full((4, 4, 4), 9, np.uint8), labels=np.arange(4))
    data = open_images(tmp_path / "d.npz", Preprocessing(mean=(0.0,), std=(1.0,), input_size=(8, 8)))
    assert data.images.shape == (4, 8, 8, 1) and (data.images == 9).all()
    assert data.class_names == ("0", "1", "2", "3")


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros(2, np.int64)}, r"no 'images' array \(it has labels\)"),
        ({"images": np.zeros((2, 8, 8, 3), np.float32), "labels": np.zeros(2, np.int64)}, "'images' is float32"),
        ({"images": np.zeros((2, 8, 8, 3, 1), np.uint8), "labels": np.zeros(2, np.int64)}, r"of shape \(2, 8, 8, 3, 1\)"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.zeros(3, np.int64)}, "expected 2 integers"),
        ({"images": np.zeros((2, 8, 8, 3), np.uint8), "labels": np.array([0, 7])}, "labels go from 0 to 7 but there are 4 classes"),
    ],
)
def test_malformed_npz_is_an_error(tmp_path: Path, arrays: dict[str, np.ndarray], message: str) -> None:
    """An .npz without `images`/`labels`, with non-uint8 or non-NHWC images, or bad labels raises DataError."""
    np.savez(tmp_path / "d.npz", **arrays)
    with pytest.raises(DataError, match=message) as err:
        open_images(tmp_path / "d.npz", NAMED)
    assert str(tmp_path / "d.npz") in str(err.value) and "\n" not in str(err.value)


def test_missing_path_is_an_error(tmp_path: Path) -> None:
    """A path that does not exist raises DataError naming it and the accepted layouts."""
    with pytest.raises(DataError, match=r"nope: no such file or directory; give an image folder"):
        open_images(tmp_path / "nope", PRE)


def test_unsupported_file_is_an_error(tmp_path: Path) -> None:
    """A file that is neither an archive nor an .npz raises DataError."""
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(DataError, match="unsupported data file"):
        open_images(tmp_path / "x.csv", PRE)


def test_folder_or_archive_without_images_is_an_error(tmp_path: Path) -> None:
    """An empty folder or archive raises 'no images found in X: expected X/<class>/<image>.jpg'."""
    (tmp_path / "empty" / "cat").mkdir(parents=True)
    (tmp_path / "empty" / "cat" / "notes.txt").write_text("no images here")
    for path in (tmp_path / "empty", _archive(tmp_path / "empty", tmp_path / "e.tar.gz")):
        with pytest.raises(DataError, match=rf"no images found in {path}: expected {path}/<class>/<image>.jpg"):
            open_images(path, PRE)


def test_images_outside_class_folders_are_an_error(tmp_path: Path) -> None:
    """Images directly in the root (no class folder) raise DataError naming one of them."""
    _tree(tmp_path, {"cat": 1})
    Image.fromarray(_pixels(0)).save(tmp_path / "loose.png")
    with pytest.raises(DataError, match=r"one folder per class.*loose.png"):
        open_images(tmp_path, PRE)


def test_several_wrapper_folders_are_an_error(tmp_path: Path) -> None:
    """root/train/<class>/... beside root/test/<class>/... asks the user to pick one."""
    _tree(tmp_path / "train", {"cat": 1})
    _tree(tmp_path / "test", {"cat": 1})
    with pytest.raises(DataError, match=r"several top-level folders \(test, train\)"):
        open_images(tmp_path, PRE)


def test_corrupt_image_is_an_error_naming_it(tmp_path: Path) -> None:
    """An undecodable image raises DataError naming the file, or the archive member."""
    _tree(tmp_path / "tree", {"cat": 1})
    buffer = io.BytesIO()
    Image.fromarray(_pixels(0)).save(buffer, format="JPEG")
    (tmp_path / "tree" / "cat" / "bad.jpg").write_bytes(buffer.getvalue()[:100])  # truncated JPEG
    with pytest.raises(DataError, match=r"cat/bad.jpg: cannot decode the image"):
        open_images(tmp_path / "tree", PRE)
    archive = _archive(tmp_path / "tree", tmp_path / "a.tar.gz")
    with pytest.raises(DataError, match=r"a.tar.gz:test/cat/bad.jpg: cannot decode the image"):
        open_images(archive, PRE)


def test_truncated_archive_is_an_error(tmp_path: Path) -> None:
    """A cut-off .tar.gz raises DataError, not a tarfile/zlib traceback."""
    _tree(tmp_path / "tree", {"cat": 20})
    archive = _archive(tmp_path / "tree", tmp_path / "a.tar.gz")
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match="cannot read the archive"):
        open_images(archive, PRE)


def test_cifar10_test_archive_sample(shared_file) -> None:
    """500 seeded images from the real CIFAR-10 test archive: (500, 3, 32, 32) inputs, labels 0..9, reproducible."""
    archive = shared_file("datasets", "cifar10-test-jpg.tar.gz")
    pre = Preprocessing(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26), input_size=(32, 32), class_names=CIFAR10_CLASSES)
    data = open_images(archive, pre, limit=500, seed=0)
    inputs = np.concatenate([x for x, _ in data.batches(256)])
    assert inputs.shape == (500, 3, 32, 32) and inputs.dtype == np.float32
    assert data.labels.min() >= 0 and data.labels.max() <= 9 and len(set(data.labels.tolist())) == 10
    again = open_images(archive, pre, limit=500, seed=0)
    assert again.names == data.names
    np.testing.assert_array_equal(again.images, data.images)
    # Labels come from the folder names: every image in test/cat/ is CIFAR class 3.
    assert all(label == CIFAR10_CLASSES.index(name.split("/")[-2]) for name, label in zip(data.names, data.labels))


def test_missing_shared_data_fails_under_ci(shared_file, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Missing shared data skips a test locally but fails it when CI=true."""
    monkeypatch.setenv("TOOLCHAIN_SHARED", str(tmp_path / "absent"))
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="absent"):
        shared_file("datasets", "cifar10-test-jpg.tar.gz")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        shared_file("datasets", "cifar10-test-jpg.tar.gz")
