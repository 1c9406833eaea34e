"""The ImageNet training crops (sst.data.transforms.IMAGENET_CROPS): torchvision's
RandomResizedCrop by default, and the SRigL authors' ResNet-50 crop (shorter side resized to
256 or 480 at random, then a random 224 crop and a flip) as ``dataset.train_crop``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from sst.data import imagefolder, imagenet
from sst.data.transforms import RandomShorterSide, imagenet_transform


def picture(width: int, height: int) -> Image.Image:
    pixels = torch.arange(width * height * 3, dtype=torch.int64).remainder(251).to(torch.uint8)
    return Image.fromarray(pixels.reshape(height, width, 3).numpy())


def test_default_crop_is_random_resized_crop() -> None:
    steps = imagenet_transform(True).transforms
    assert isinstance(steps[0], T.RandomResizedCrop) and steps[0].size == (224, 224)
    assert isinstance(steps[1], T.RandomHorizontalFlip)


def test_srigl_crop_resizes_the_shorter_side_to_256_or_480_then_crops_224() -> None:
    steps = imagenet_transform(True, crop="resize_256_480").transforms
    resize, crop, flip = steps[:3]
    assert isinstance(resize, RandomShorterSide)
    assert [r.size for r in resize.resizes] == [256, 480]
    assert isinstance(crop, T.RandomCrop) and crop.size == (224, 224)
    assert isinstance(flip, T.RandomHorizontalFlip)
    # both sizes are drawn, from torch's generator (the loader seeds it per batch)
    image = picture(300, 200)
    shorter = set()
    for seed in range(40):
        torch.manual_seed(seed)
        shorter.add(min(resize(image).size))
    assert shorter == {256, 480}
    torch.manual_seed(3)
    first = resize(image).size
    torch.manual_seed(3)
    assert resize(image).size == first
    out = imagenet_transform(True, crop="resize_256_480")(image)
    assert out.shape == (3, 224, 224)


def test_crop_sizes_scale_with_the_image_size() -> None:
    resize = imagenet_transform(True, size=112, crop="resize_256_480").transforms[0]
    assert [r.size for r in resize.resizes] == [128, 240]


def test_test_transform_is_the_same_for_every_crop() -> None:
    for crop in ("random_resized", "resize_256_480"):
        steps = imagenet_transform(False, crop=crop).transforms
        assert isinstance(steps[0], T.Resize) and steps[0].size == 256
        assert isinstance(steps[1], T.CenterCrop) and steps[1].size == (224, 224)


def test_unknown_crop_is_refused() -> None:
    with pytest.raises(ValueError, match="train_crop='fancy' is unknown"):
        imagenet_transform(False, crop="fancy")


def test_dataset_option_reaches_the_training_transform(tmp_path: Path) -> None:
    for split in ("train", "val"):
        for label in ("a", "b"):
            (tmp_path / split / label).mkdir(parents=True)
            picture(40, 30).save(tmp_path / split / label / "0.jpg")
    splits = imagenet(str(tmp_path), image_size=16, train_crop="resize_256_480")
    train_steps = splits.train.transform.transforms
    assert isinstance(train_steps[0], RandomShorterSide)
    assert [r.size for r in train_steps[0].resizes] == [18, 34]
    assert splits.train[0][0].shape == (3, 16, 16)
    assert isinstance(splits.test.transform.transforms[0], T.Resize)
    default = imagenet(str(tmp_path), image_size=16)
    assert isinstance(default.train.transform.transforms[0], T.RandomResizedCrop)
    with pytest.raises(ValueError, match="transform=imagenet only"):
        imagefolder(str(tmp_path), transform="cifar", train_crop="resize_256_480")
