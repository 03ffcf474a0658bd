"""Data sets: built-in digits and synthetic, and folders in MNIST idx, CIFAR-10 python-batch and
image-folder layout, all from tiny fixtures written here (nothing is downloaded)."""

from __future__ import annotations

import gzip
import os
import pickle
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from model.data import BUILTIN_CLASSES, DATASETS, DataBundle, DatasetError, get_dataset
from model.data.bundle import RandomCropFlip, stratified_split
from model.data.cifar import CIFAR10_CLASSES
from model.networks import create_model

# --------------------------------------------------------------------------- fixture writers


def _idx(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.astype(np.uint8).tobytes()


def write_mnist(folder, n_train=12, n_test=6, size=28, gz=False, sub="."):
    """Four idx files; image k is filled with the value 10·label (an easy check)."""
    root = folder / sub
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = np.arange(n, dtype=np.uint8) % 10
        images = np.repeat(labels * 10, size * size).reshape(n, size, size)
        for kind, array, magic in (("images-idx3", images, 2051), ("labels-idx1", labels, 2049)):
            data = _idx(array, magic)
            name = f"{prefix}-{kind}-ubyte"
            if gz:
                (root / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (root / name).write_bytes(data)
    return root


def _short(b: bytes) -> bytes:
    return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<i", len(b)) + b


def _int(v: int) -> bytes:
    return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)


def py2_batch(data: np.ndarray, labels: list[int]) -> bytes:
    """A batch exactly as the official files are: a Python 2 (cPickle protocol 2) dict with
    byte-string keys, ``numpy.core.multiarray._reconstruct`` and a ``numpy.dtype`` state."""
    out = b"\x80\x02}(" + _short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += _int(0) + b"\x85" + _short(b"b") + b"\x87R"  # _reconstruct(ndarray, (0,), b"b")
    out += b"(" + _int(1) + _int(data.shape[0]) + _int(data.shape[1]) + b"\x86"
    out += b"cnumpy\ndtype\n" + _short(b"u1") + _int(0) + _int(1) + b"\x87R"
    out += b"(" + _int(3) + _short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xff" + _int(0)
    out += b"tb\x89" + _short(data.tobytes()) + b"tb"  # dtype state; (…, False, raw bytes)
    out += _short(b"labels") + b"](" + b"".join(_int(v) for v in labels) + b"eu."
    return out


def cifar_rows(labels: list[int]) -> np.ndarray:
    """N×3072 rows; image k has red = label, green = 100 + label, blue = 200 + label."""
    planes = [np.full((len(labels), 1024), 0, np.uint8) + np.uint8(base) for base in (0, 100, 200)]
    rows = np.concatenate(planes, axis=1)
    return rows + np.asarray(labels, dtype=np.uint8)[:, None]


def write_cifar(folder, per_batch=4, sub="cifar-10-batches-py", protocol=None, skip=()):
    root = folder / sub
    root.mkdir(parents=True, exist_ok=True)
    names = [f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        if name in skip:
            continue
        labels = [(k + j) % 10 for j in range(per_batch)]
        if protocol is None:
            payload = py2_batch(cifar_rows(labels), labels)
        else:
            payload = pickle.dumps({"data": cifar_rows(labels), "labels": labels}, protocol)
        (root / name).write_bytes(payload)
    return root


def write_image_folder(folder, classes=("cat", "ant", "bee"), size=(10, 8), mode="RGB"):
    for split, count in (("train", 3), ("test", 1)):
        for label, name in enumerate(sorted(classes)):
            d = folder / split / name
            d.mkdir(parents=True)
            for j in range(count):
                color = (40 * label, 10 * j, 200) if mode == "RGB" else 40 * label + j
                Image.new(mode, size, color).save(d / f"{j}.png")
    return folder


# --------------------------------------------------------------------------- built-in sets


def test_builtin_class_counts_are_the_sets_own():
    """The API checks a job's checkpoint against these without loading the set."""
    assert set(BUILTIN_CLASSES) == set(DATASETS)
    for name, classes in BUILTIN_CLASSES.items():
        assert get_dataset(name).num_classes == classes


def test_digits_is_the_real_set_at_mnist_shape():
    bundle = get_dataset("digits")
    assert isinstance(bundle, DataBundle)
    assert (bundle.name, bundle.num_classes, bundle.input_shape) == ("digits", 10, (1, 28, 28))
    assert bundle.classes == [str(d) for d in range(10)]
    assert len(bundle.train) + len(bundle.test) == 1797
    assert len(bundle.test) == pytest.approx(0.2 * 1797, abs=10)
    image, label = bundle.train[0]
    assert image.shape == (1, 28, 28) and image.dtype == torch.float32
    assert isinstance(label, int) and 0 <= label < 10


def test_digits_split_is_stratified_and_seeded():
    a, b, c = get_dataset("digits"), get_dataset("digits"), get_dataset("digits", seed=1)
    counts = np.bincount(a.test.labels.numpy(), minlength=10)
    totals = counts + np.bincount(a.train.labels.numpy(), minlength=10)
    assert np.all(np.abs(counts - 0.2 * totals) <= 1)
    assert torch.equal(a.test.images, b.test.images)
    assert not torch.equal(a.test.images, c.test.images)


def test_digits_are_normalised_with_training_statistics():
    bundle = get_dataset("digits")
    train = torch.stack([bundle.train[i][0] for i in range(len(bundle.train))])
    assert float(train.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(train.std()) == pytest.approx(1.0, abs=1e-3)


def test_digits_fit_any_network_input():
    bundle = get_dataset("digits", input_shape=(3, 32, 32))
    image, _ = bundle.test[0]
    assert bundle.input_shape == (3, 32, 32) and image.shape == (3, 32, 32)
    assert torch.equal(image[0], image[1])  # grey repeated into three channels
    batch = torch.stack([bundle.test[i][0] for i in range(4)])
    assert create_model("cifar_convnet")(batch).shape == (4, 10)


def test_lenet5_runs_on_default_digits():
    loader = torch.utils.data.DataLoader(get_dataset("digits").train, batch_size=8)
    images, labels = next(iter(loader))
    assert create_model("lenet5")(images).shape == (8, 10) and labels.dtype == torch.long


def test_synthetic_is_small_deterministic_and_learnable():
    a, b = get_dataset("synthetic", seed=3), get_dataset("synthetic", seed=3)
    assert 200 <= len(a.train) <= 1000 and a.num_classes == 10
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, get_dataset("synthetic", seed=4).train.images)
    # nearest class mean on the training split classifies the test split
    train_x = a.train.images.flatten(1)
    means = torch.stack([train_x[a.train.labels == k].mean(0) for k in range(10)])
    predicted = torch.cdist(a.test.images.flatten(1), means).argmin(1)
    assert float((predicted == a.test.labels).float().mean()) > 0.9


def test_synthetic_takes_the_requested_shape():
    bundle = get_dataset("synthetic", input_shape=(3, 16, 12))
    assert bundle.input_shape == (3, 16, 12) and bundle.train[0][0].shape == (3, 16, 12)


def test_unknown_name_lists_valid_names_and_folders():
    assert set(DATASETS) == {"digits", "synthetic"}
    with pytest.raises(DatasetError, match="valid names are digits, synthetic") as err:
        get_dataset("mnist")
    assert "folder" in str(err.value)
    with pytest.raises(DatasetError, match="unknown dataset ''"):
        get_dataset("")  # not the current directory


def test_stratified_split_keeps_a_training_sample_per_class():
    train, test = stratified_split(np.array([0, 1, 1, 1, 1, 1]), 0.5, seed=0)
    assert sorted([*train, *test]) == list(range(6)) and 0 in train


# --------------------------------------------------------------------------- MNIST idx


@pytest.mark.parametrize(("gz", "sub"), [(False, "."), (True, "MNIST/raw")])
def test_mnist_idx_folder(tmp_path, gz, sub):
    write_mnist(tmp_path, gz=gz, sub=sub)
    bundle = get_dataset(str(tmp_path))
    assert bundle.name.startswith("mnist:")
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (12, 6, (1, 28, 28))
    assert bundle.num_classes == 10
    images, labels = bundle.train.images, bundle.train.labels
    assert images.dtype == torch.uint8
    assert torch.equal(images[:, 0, 0, 0], (labels * 10).to(torch.uint8))


def test_mnist_fitted_to_a_cifar_network(tmp_path):
    write_mnist(tmp_path)
    bundle = get_dataset(str(tmp_path), input_shape=(3, 32, 32))
    assert bundle.train.images.shape == (12, 3, 32, 32)
    assert int(bundle.train.images[3, 2, 16, 16]) == 30  # constant images stay constant


def test_mnist_bad_magic_is_refused(tmp_path):
    root = write_mnist(tmp_path)
    labels = (root / "train-labels-idx1-ubyte").read_bytes()
    (root / "train-labels-idx1-ubyte").write_bytes(struct.pack(">I", 2051) + labels[4:])
    with pytest.raises(DatasetError, match="magic number 0x00000803, expected 0x00000801"):
        get_dataset(str(tmp_path))


def test_mnist_truncated_file_is_refused(tmp_path):
    root = write_mnist(tmp_path)
    data = (root / "t10k-images-idx3-ubyte").read_bytes()
    (root / "t10k-images-idx3-ubyte").write_bytes(data[:-5])
    with pytest.raises(DatasetError, match=r"6×28×28 = 4704 bytes of data, the file holds 4699"):
        get_dataset(str(tmp_path))


def test_mnist_count_mismatch_is_refused(tmp_path):
    root = write_mnist(tmp_path)
    (root / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(5, np.uint8), 2049))
    with pytest.raises(DatasetError, match="12 images but 5 labels"):
        get_dataset(str(tmp_path))


def test_mnist_missing_file_is_named(tmp_path):
    root = write_mnist(tmp_path)
    (root / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DatasetError, match="missing t10k-labels-idx1-ubyte"):
        get_dataset(str(tmp_path))


# --------------------------------------------------------------------------- CIFAR-10


def test_cifar_official_python2_batches(tmp_path):
    write_cifar(tmp_path)
    bundle = get_dataset(str(tmp_path), augment=False)
    assert bundle.name.startswith("cifar10:")
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (20, 4, (3, 32, 32))
    assert bundle.classes == CIFAR10_CLASSES
    images, labels = bundle.train.images, bundle.train.labels
    # rows are the red, then green, then blue planes
    assert torch.equal(images[:, 0, 5, 7], labels.to(torch.uint8))
    assert torch.equal(images[:, 2, 31, 0], (labels + 200).to(torch.uint8))


def test_cifar_python3_pickles_and_label_names(tmp_path):
    root = write_cifar(tmp_path, sub=".", protocol=4)
    names = [f"c{k}" for k in range(10)]
    (root / "batches.meta").write_bytes(pickle.dumps({"label_names": names}, protocol=4))
    bundle = get_dataset(str(tmp_path))
    assert bundle.classes == names and len(bundle.train) == 20


def test_cifar_training_split_is_augmented_test_is_not(tmp_path):
    write_cifar(tmp_path)
    augmented = get_dataset(str(tmp_path))
    plain = get_dataset(str(tmp_path), augment=False)
    torch.manual_seed(0)
    draws = torch.stack([augmented.train[0][0] for _ in range(20)])
    assert not all(torch.equal(d, draws[0]) for d in draws)  # random crops differ
    assert torch.equal(augmented.test[0][0], augmented.test[0][0])
    assert torch.equal(plain.train[0][0], plain.train[0][0])


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_cifar_malicious_pickle_is_refused(tmp_path, monkeypatch):
    root = write_cifar(tmp_path)
    (root / "data_batch_3").write_bytes(pickle.dumps({"data": _Exploit()}, protocol=2))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DatasetError, match=r"refusing to load global (posix|nt)\.system"):
        get_dataset(str(tmp_path))
    assert not (tmp_path / "pwned").exists()


def test_cifar_object_arrays_are_refused(tmp_path):
    root = write_cifar(tmp_path)
    rows = np.empty((1, 3072), dtype=object)
    (root / "test_batch").write_bytes(pickle.dumps({"data": rows, "labels": [0]}, protocol=4))
    with pytest.raises(DatasetError, match="object arrays are not allowed"):
        get_dataset(str(tmp_path))


def test_cifar_wrong_content_is_refused(tmp_path):
    root = write_cifar(tmp_path)
    bad = {"data": np.zeros((2, 100), np.uint8), "labels": [0, 1]}
    (root / "data_batch_1").write_bytes(pickle.dumps(bad, protocol=4))
    with pytest.raises(DatasetError, match="100 values, expected 3072"):
        get_dataset(str(tmp_path))


def test_cifar_missing_batches_are_named(tmp_path):
    write_cifar(tmp_path, skip=("data_batch_4", "test_batch"))
    with pytest.raises(DatasetError, match="missing data_batch_4, test_batch"):
        get_dataset(str(tmp_path))


# --------------------------------------------------------------------------- image folder


def test_image_folder_sorted_classes(tmp_path):
    write_image_folder(tmp_path)
    bundle = get_dataset(str(tmp_path))
    assert bundle.classes == ["ant", "bee", "cat"] and bundle.num_classes == 3
    assert (len(bundle.train), len(bundle.test), bundle.input_shape) == (9, 3, (3, 8, 10))
    images, labels = bundle.train.images, bundle.train.labels
    assert torch.equal(images[:, 0, 0, 0], (labels * 40).to(torch.uint8))
    assert torch.equal(images[:, 2, 4, 4], torch.full((9,), 200, dtype=torch.uint8))


def test_image_folder_grey_and_resized(tmp_path):
    write_image_folder(tmp_path, mode="L")
    assert get_dataset(str(tmp_path)).input_shape == (1, 8, 10)
    bundle = get_dataset(str(tmp_path), input_shape=(3, 28, 28))
    assert bundle.train.images.shape == (9, 3, 28, 28)


def test_image_folder_unknown_test_class(tmp_path):
    write_image_folder(tmp_path)
    (tmp_path / "test" / "dog").mkdir()
    with pytest.raises(DatasetError, match="classes not in train/: dog"):
        get_dataset(str(tmp_path))


def test_wrong_folder_names_every_format(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(DatasetError) as err:
        get_dataset(str(tmp_path))
    message = str(err.value)
    for expected in ("train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "data_batch_1",
                     "test_batch", "train/<class>/"):  # fmt: skip
        assert expected in message


def test_a_file_is_not_a_dataset(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"x")
    with pytest.raises(DatasetError, match="is a file"):
        get_dataset(str(path))


# --------------------------------------------------------------------------- augmentation


def test_random_crop_flip_is_a_window_of_the_padded_image():
    image = torch.arange(2 * 6 * 6, dtype=torch.float32).reshape(2, 6, 6) + 1
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2))
    torch.manual_seed(0)
    for _ in range(10):
        out = RandomCropFlip(padding=2)(image)
        assert out.shape == image.shape
        windows = [padded[:, i : i + 6, j : j + 6] for i in range(5) for j in range(5)]
        assert any(torch.equal(out, w) or torch.equal(out, w.flip(-1)) for w in windows)
