"""Tests for sst.data: builders, loaders and archive helpers (CPU, no network)."""

from __future__ import annotations

import dataclasses
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, TensorDataset

from sst.data import (
    DataSplits,
    EpochLoader,
    cifar10,
    cifar100,
    digits,
    find_split_root,
    imagefolder,
    imagenet,
    make_loader,
    synthetic,
    unpack_once,
)

# ---------------------------------------------------------------- helpers


def _tensors(ds: TensorDataset) -> tuple[torch.Tensor, ...]:
    return ds.tensors


def _order(loader: EpochLoader) -> list[int]:
    """Targets seen in one pass, for loaders over a dataset whose target is the index."""
    return [int(i) for _, targets in loader for i in targets]


def _index_dataset(size: int) -> TensorDataset:
    return TensorDataset(torch.arange(size).float().unsqueeze(1), torch.arange(size))


class _Recording(Dataset):
    """Map-style dataset that returns (random noise, index) and records what it loaded."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        self.loaded.append(index)
        return torch.rand(2), index


def _write_jpegs(root: Path, split: str, classes: tuple[str, ...], per_class: int, size) -> None:
    for k, name in enumerate(classes):
        folder = root / split / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", size, (40 * k, 10 * i, 200)).save(folder / f"{i}.jpg")


def _make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# ---------------------------------------------------------------- registry / container


def test_data_splits_are_frozen() -> None:
    splits = digits()
    with pytest.raises(dataclasses.FrozenInstanceError):
        splits.name = "other"  # type: ignore[misc]


# ---------------------------------------------------------------- digits


def test_digits_shapes_classes_and_split_sizes() -> None:
    splits = digits(0.2, seed=0)
    assert isinstance(splits, DataSplits)
    assert isinstance(splits.train, TensorDataset) and isinstance(splits.test, TensorDataset)
    assert (splits.num_classes, splits.input_shape, splits.name) == (10, (1, 8, 8), "digits")
    x_tr, y_tr = _tensors(splits.train)
    x_te, y_te = _tensors(splits.test)
    assert len(x_tr) + len(x_te) == 1797
    assert len(x_te) == 360  # ceil(0.2 * 1797)
    assert x_tr.shape[1:] == (1, 8, 8) and x_tr.dtype == torch.float32
    assert y_tr.dtype == torch.int64
    assert float(x_tr.min()) >= 0.0 and float(x_tr.max()) == 1.0
    assert set(y_tr.tolist()) == set(y_te.tolist()) == set(range(10))
    # stratified: every class has ~20% of its samples in test
    for c in range(10):
        frac = (y_te == c).sum() / ((y_te == c).sum() + (y_tr == c).sum())
        assert abs(float(frac) - 0.2) < 0.02


def test_digits_deterministic_per_seed() -> None:
    a, b, c = digits(seed=3), digits(seed=3), digits(seed=4)
    assert torch.equal(a.train.tensors[0], b.train.tensors[0])
    assert torch.equal(a.test.tensors[1], b.test.tensors[1])
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    assert len(digits(0.5).test) == 899
    with pytest.raises(ValueError, match="test_fraction"):
        digits(1.5)


# ---------------------------------------------------------------- synthetic


def test_synthetic_deterministic_and_learnable() -> None:
    a = synthetic(3, input_shape=(2, 4, 4), train_size=300, test_size=90, seed=7)
    b = synthetic(3, input_shape=(2, 4, 4), train_size=300, test_size=90, seed=7)
    c = synthetic(3, input_shape=(2, 4, 4), train_size=300, test_size=90, seed=8)
    assert (a.num_classes, a.input_shape, a.name) == (3, (2, 4, 4), "synthetic")
    x, y = a.train.tensors
    assert x.shape == (300, 2, 4, 4) and y.shape == (300,) and len(a.test) == 90
    assert set(y.tolist()) == {0, 1, 2}
    for ta, tb in zip(
        a.train.tensors + a.test.tensors, b.train.tensors + b.test.tensors, strict=True
    ):
        assert torch.equal(ta, tb)
    assert not torch.equal(a.train.tensors[0], c.train.tensors[0])
    # nearest class mean (estimated on train) classifies the test split well
    means = torch.stack([x[y == k].mean(0) for k in range(3)]).flatten(1)
    xt, yt = a.test.tensors
    pred = torch.cdist(xt.flatten(1), means).argmin(1)
    assert (pred == yt).float().mean() > 0.9


# ---------------------------------------------------------------- loaders


def test_loader_len_with_and_without_drop_last() -> None:
    ds = _index_dataset(10)
    assert len(make_loader(ds, batch_size=3, shuffle=True, seed=0)) == 4
    dropping = make_loader(ds, batch_size=3, shuffle=True, seed=0, drop_last=True)
    assert len(dropping) == 3
    batches = list(dropping)
    assert len(batches) == 3 and all(len(t) == 3 for _, t in batches)
    assert [len(t) for _, t in make_loader(ds, batch_size=3, shuffle=False, seed=0)] == [3, 3, 3, 1]
    assert len(make_loader(ds, batch_size=5, shuffle=False, seed=0, drop_last=True)) == 2


def test_loader_order_is_a_function_of_seed_and_epoch() -> None:
    ds = _index_dataset(50)
    first = make_loader(ds, batch_size=8, shuffle=True, seed=1)
    second = make_loader(ds, batch_size=8, shuffle=True, seed=1)
    first.set_epoch(3)
    second.set_epoch(0)
    list(second)  # consuming other epochs first must not matter
    second.set_epoch(3)
    order = _order(first)
    assert order == _order(second)
    assert sorted(order) == list(range(50))
    assert _order(first) == order  # re-iterating the same epoch repeats it
    first.set_epoch(4)
    assert _order(first) != order
    other_seed = make_loader(ds, batch_size=8, shuffle=True, seed=2)
    other_seed.set_epoch(3)
    assert _order(other_seed) != order
    plain = make_loader(ds, batch_size=8, shuffle=False, seed=1)
    plain.set_epoch(5)
    assert _order(plain) == list(range(50))


def test_loader_order_does_not_depend_on_global_rng() -> None:
    ds = _index_dataset(20)
    loader = make_loader(ds, batch_size=4, shuffle=True, seed=0)
    torch.manual_seed(1)
    a = _order(loader)
    torch.manual_seed(2)
    assert _order(loader) == a


def test_skip_batches_gives_the_tail_of_the_epoch() -> None:
    ds = _index_dataset(23)
    loader = make_loader(ds, batch_size=5, shuffle=True, seed=9)
    loader.set_epoch(2)
    full = [t.tolist() for _, t in loader]
    loader.set_epoch(2, skip_batches=3)
    assert [t.tolist() for _, t in loader] == full[3:]
    assert len(loader) == 5
    loader.set_epoch(2, skip_batches=5)
    assert list(loader) == []
    with pytest.raises(ValueError, match="skip_batches"):
        loader.set_epoch(2, skip_batches=6)
    loader.set_epoch(3)  # a new epoch starts from its first batch again
    assert len(list(loader)) == 5


def test_generic_path_matches_fast_path_and_skips_without_loading() -> None:
    size = 17
    fast = make_loader(_index_dataset(size), batch_size=4, shuffle=True, seed=5)
    recording = _Recording(size)
    slow = make_loader(recording, batch_size=4, shuffle=True, seed=5)
    for loader in (fast, slow):
        loader.set_epoch(1)
    assert _order(slow) == _order(fast)
    full = list(slow)
    recording.loaded.clear()
    slow.set_epoch(1, skip_batches=2)
    tail = list(slow)
    skipped = {int(i) for _, t in full[:2] for i in t}
    assert not skipped & set(recording.loaded)
    assert len(recording.loaded) == size - len(skipped)
    # random per-sample "augmentation" repeats per (seed, epoch, batch), also after a skip
    for (xa, ta), (xb, tb) in zip(full[2:], tail, strict=True):
        assert torch.equal(ta, tb) and torch.equal(xa, xb)
    slow.set_epoch(2)
    assert not torch.equal(next(iter(slow))[0], full[0][0])


def test_generic_path_leaves_global_rng_alone() -> None:
    loader = make_loader(_Recording(8), batch_size=4, shuffle=True, seed=0)
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    list(loader)
    assert torch.equal(torch.rand(3), expected)


def test_worker_loading_matches_main_process() -> None:
    main = make_loader(_Recording(12), batch_size=3, shuffle=True, seed=4)
    workers = make_loader(_Recording(12), batch_size=3, shuffle=True, seed=4, num_workers=2)
    for epoch in (0, 1):
        main.set_epoch(epoch)
        workers.set_epoch(epoch)
        for (xa, ta), (xb, tb) in zip(main, workers, strict=True):
            assert torch.equal(ta, tb) and torch.equal(xa, xb)
    workers.close()
    workers.set_epoch(1, skip_batches=3)
    assert [t.tolist() for _, t in workers] == [t.tolist() for _, t in main][3:]
    workers.close()


# ---------------------------------------------------------------- image folders


@pytest.fixture
def jpeg_tree(tmp_path: Path) -> Path:
    classes = ("cat", "dog", "emu")
    for split in ("train", "val"):
        _write_jpegs(tmp_path, split, classes, 2, (40, 30))
    _write_jpegs(tmp_path, "test", classes, 2, (32, 32))
    return tmp_path


def test_imagefolder_imagenet_preset(jpeg_tree: Path) -> None:
    splits = imagefolder(str(jpeg_tree), image_size=16)
    assert (splits.num_classes, splits.input_shape) == (3, (3, 16, 16))
    assert len(splits.train) == len(splits.test) == 6
    for ds in (splits.train, splits.test):
        x, y = ds[5]
        assert x.shape == splits.input_shape and y == 2
    raw = imagefolder(str(jpeg_tree), image_size=16, normalize=False)
    x, _ = raw.train[0]
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert imagenet(str(jpeg_tree), image_size=16).name == "imagenet"


def test_imagefolder_cifar_preset(jpeg_tree: Path) -> None:
    splits = imagefolder(
        str(jpeg_tree), image_size=32, transform="cifar", normalize=False, test_dir="test"
    )
    assert (splits.num_classes, splits.input_shape) == (3, (3, 32, 32))
    x_train, _ = splits.train[0]
    x_test, _ = splits.test[0]
    assert x_train.shape == x_test.shape == (3, 32, 32)
    # test images are 32x32 already: ToTensor only, exactly the pixels on disk
    ref = torch.from_numpy(np.array(Image.open(jpeg_tree / "test" / "cat" / "0.jpg")))
    assert torch.allclose(x_test, ref.permute(2, 0, 1).float() / 255)


def test_imagefolder_checks_num_classes(jpeg_tree: Path) -> None:
    assert imagefolder(str(jpeg_tree), image_size=8, num_classes=3).num_classes == 3
    with pytest.raises(ValueError, match="num_classes"):
        imagefolder(str(jpeg_tree), image_size=8, num_classes=1000)


def test_bad_transform_names_allowed_values(jpeg_tree: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset\.transform") as err:
        imagefolder(str(jpeg_tree), transform="fancy")
    assert "imagenet" in str(err.value) and "cifar" in str(err.value)


def test_missing_folders_name_dataset_root(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=r"dataset\.root") as err:
        imagefolder(str(missing))
    assert str(missing) in str(err.value)
    (tmp_path / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset\.root") as err:
        imagefolder(str(tmp_path))
    assert str(tmp_path / "val") in str(err.value)
    (tmp_path / "val").mkdir()
    with pytest.raises(FileNotFoundError, match=r"dataset\.root") as err:
        imagefolder(str(tmp_path))  # folders exist but hold no classes
    assert str(tmp_path / "train") in str(err.value)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("builder", [cifar10, cifar100])
def test_cifar_missing_names_settings(builder, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as err:
        builder(str(tmp_path), download=False)
    msg = str(err.value)
    assert "dataset.root" in msg and "dataset.download=true" in msg
    assert str(tmp_path) in msg


class _NoNetwork(Exception):
    pass


@pytest.mark.parametrize("builder", [cifar10, cifar100])
def test_cifar_download_asks_torchvision_for_root(builder, tmp_path, monkeypatch) -> None:
    import torchvision.datasets.cifar as tv_cifar

    calls: list[tuple] = []

    def fake_download(url, download_root, *args, **kwargs):
        calls.append((url, str(download_root)))
        raise _NoNetwork

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    root = tmp_path / "cifar"
    with pytest.raises(_NoNetwork):
        builder(str(root), download=True)
    assert len(calls) == 1
    url, download_root = calls[0]
    assert url.endswith(".tar.gz") and download_root == str(root)


def test_cifar_transforms() -> None:
    from torchvision import transforms as T

    from sst.data.transforms import cifar_transform

    train = cifar_transform(True).transforms
    crop = train[0]
    assert isinstance(crop, T.RandomCrop)
    assert (crop.size, crop.padding, crop.padding_mode) == ((32, 32), 4, "reflect")
    assert isinstance(train[1], T.RandomHorizontalFlip) and isinstance(train[2], T.ToTensor)
    assert len(train) == 3  # no Normalize unless asked
    test = cifar_transform(False, stats=((0.5,) * 3, (0.25,) * 3)).transforms
    assert [type(t) for t in test] == [T.ToTensor, T.Normalize]


# ---------------------------------------------------------------- archives


def _layout_tar(path: Path) -> Path:
    return _make_tar(path, {"train/a/0.txt": b"x", "test/a/0.txt": b"y"})


def test_unpack_once_extracts_only_once(tmp_path: Path, monkeypatch) -> None:
    archive = _layout_tar(tmp_path / "small-set.tar.gz")
    cache = tmp_path / "cache"
    root = unpack_once(archive, cache)
    assert root == cache / "small-set"
    assert (root / "train" / "a" / "0.txt").read_bytes() == b"x"
    (root / "sentinel").write_text("still here")

    def no_reopen(*args, **kwargs):
        raise AssertionError("archive was opened again")

    with monkeypatch.context() as patch:
        patch.setattr(tarfile, "open", no_reopen)
        assert unpack_once(str(archive), str(cache)) == root
    assert (root / "sentinel").exists()
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["small-set"]


def test_unpack_once_redoes_an_interrupted_extraction(tmp_path: Path) -> None:
    archive = _layout_tar(tmp_path / "set.tgz")
    cache = tmp_path / "cache"
    (cache / "set" / "train").mkdir(parents=True)  # half-done, no marker
    (cache / "set" / "junk").write_text("partial")
    root = unpack_once(archive, cache)
    assert not (root / "junk").exists() and (root / "test" / "a" / "0.txt").exists()
    with pytest.raises(FileNotFoundError):
        unpack_once(tmp_path / "absent.tar.gz", cache)


def test_another_archive_under_the_same_name_is_unpacked_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = _make_tar(tmp_path / "set.tar.gz", {"train/a/0.txt": b"x", "test/a/0.txt": b"y"})
    unpack_once(first, cache)
    three_classes = {f"{split}/{c}/0.txt": b"z" for split in ("train", "test") for c in "abc"}
    (tmp_path / "new").mkdir()
    second = _make_tar(tmp_path / "new" / "set.tar.gz", three_classes)
    root = unpack_once(second, cache)
    assert sorted(p.name for p in (root / "train").iterdir()) == ["a", "b", "c"]


def test_a_corrupt_archive_and_an_unusable_cache_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.tar.gz"
    broken.write_bytes(b"not a gzip file at all")
    with pytest.raises(ValueError, match=rf"the archive {broken} cannot be unpacked"):
        unpack_once(broken, tmp_path / "cache")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    archive = _layout_tar(tmp_path / "set.tgz")
    with pytest.raises(ValueError, match="set SST_CACHE_DIR to a writable folder"):
        unpack_once(archive, blocker / "cache")


def test_find_split_root_in_an_archive_or_a_folder(tmp_path: Path, monkeypatch) -> None:
    archive = _make_tar(
        tmp_path / "jpeg.tar.gz", {"inner/train/a/0.txt": b"x", "inner/test/a/0.txt": b"y"}
    )
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))
    found = find_split_root(archive)
    assert found == tmp_path / "cache" / "jpeg" / "inner"
    assert find_split_root(found) == found  # an unpacked folder works as-is
    assert find_split_root(tmp_path / "missing.tar.gz") is None
    assert find_split_root(archive, test_dir="val") is None


def test_imagefolder_reads_a_packed_archive(tmp_path: Path, monkeypatch) -> None:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png, format="PNG")
    files = {
        f"cifar/{split}/{c}/{i}.png": png.getvalue()
        for split in ("train", "test")
        for c in ("cat", "dog")
        for i in range(2)
    }
    archive = _make_tar(tmp_path / "tiny.tar.gz", files)
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))
    splits = imagefolder(str(archive), image_size=8, transform="cifar", test_dir="test")
    assert (len(splits.train), len(splits.test), splits.num_classes) == (4, 4, 2)
    with pytest.raises(FileNotFoundError, match=r"train/ and val/ folders inside the archive"):
        imagefolder(str(archive), image_size=8, transform="cifar", test_dir="val")


@pytest.mark.slow
def test_real_cifar10_jpeg_archive() -> None:
    source = os.environ.get("SST_CIFAR10_JPEG")
    root = find_split_root(source) if source else None
    if root is None:
        pytest.skip("set SST_CIFAR10_JPEG to the CIFAR-10 JPEG archive or folder")
    splits = imagefolder(
        str(root), image_size=32, transform="cifar", normalize=False, test_dir="test"
    )
    assert (len(splits.train), len(splits.test)) == (50_000, 10_000)
    assert splits.num_classes == 10 and splits.input_shape == (3, 32, 32)
    for ds in (splits.train, splits.test):
        x, y = ds[len(ds) - 1]
        assert x.shape == (3, 32, 32) and y == 9


def test_a_corrupt_image_names_its_file(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for name in ("a", "b"):
            folder = tmp_path / split / name
            folder.mkdir(parents=True)
            Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(folder / "0.png")
    bad = tmp_path / "train" / "a" / "1.jpg"
    bad.write_bytes(b"not an image")
    data = imagefolder(str(tmp_path), image_size=8, transform="cifar")
    data.train[0]  # a readable image
    index = data.train.samples.index((str(bad), 0))
    with pytest.raises(OSError, match=rf"dataset: the image {bad} cannot be read .*remove or"):
        data.train[index]
