"""``dataset.train_subset`` / ``test_subset`` of image folders: the same number of images
from every class, the same images on every machine, a clear error below one per class."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from sst.data.folder import imagefolder


def make_folder(root: Path, split: str, per_class: int) -> None:
    for cls in ("ant", "bee", "cat"):
        (root / split / cls).mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / split / cls / f"{i:03d}.png")


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    make_folder(tmp_path, "train", 4)
    make_folder(tmp_path, "test", 2)
    return tmp_path


def test_subset_takes_the_first_images_of_every_class(folder: Path) -> None:
    kw = {"image_size": 8, "transform": "cifar", "test_dir": "test"}
    full = imagefolder(str(folder), **kw)
    assert (len(full.train), len(full.test)) == (12, 6)
    small = imagefolder(str(folder), train_subset=7, **kw)  # 7 // 3 = 2 per class
    assert (len(small.train), len(small.test)) == (6, 6)
    names = [Path(small.train.dataset.samples[i][0]).name for i in small.train.indices]
    assert names == ["000.png", "001.png"] * 3
    assert [small.train[i][1] for i in range(6)] == [0, 0, 1, 1, 2, 2]
    assert len(imagefolder(str(folder), test_subset=3, **kw).test) == 3


def test_subset_below_one_per_class_is_refused(folder: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset.train_subset=2 must be at least"):
        imagefolder(str(folder), image_size=8, transform="cifar", test_dir="test", train_subset=2)
