"""A run on a data set given as an archive records which archive it trained on (path, size,
modification time and the cache's fingerprint) in its summary."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

from PIL import Image
from runs import compose_run

from sst.launch.run import run


def tiny_archive(path: Path) -> Path:
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(png, format="PNG")
    with tarfile.open(path, "w:gz") as tar:
        for split in ("train", "test"):
            for label in ("cat", "dog"):
                for i in range(4):
                    info = tarfile.TarInfo(f"set/{split}/{label}/{i}.png")
                    info.size = len(png.getvalue())
                    tar.addfile(info, io.BytesIO(png.getvalue()))
    return path


def test_the_summary_names_the_archive_it_trained_on(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SST_CACHE_DIR", str(tmp_path / "cache"))
    archive = tiny_archive(tmp_path / "set.tar.gz")
    os.utime(archive, ns=(1_700_000_000_000_000_000, 1_700_000_000_000_000_000))
    overrides = [
        "dataset=imagefolder",
        f"dataset.root={archive}",
        "dataset.image_size=8",
        "dataset.transform=cifar",
        "dataset.test_dir=test",
        "trainer.epochs=1",
        "trainer.batch_size=4",
        "trainer.eval_batch_size=8",
        "trainer.progress_bar=false",
        "logger=none",
    ]
    cfg, run_dir, choices = compose_run(overrides, tmp_path / "out")
    summary = run(cfg, run_dir, choices)
    (recorded,) = summary["data_archives"]
    assert recorded["path"] == str(archive.resolve())
    assert recorded["size_bytes"] == archive.stat().st_size
    assert recorded["mtime_ns"] == 1_700_000_000_000_000_000
    marker = (tmp_path / "cache" / "set.unpacked").read_text().strip()
    assert recorded["fingerprint"] == marker  # what the cache is keyed by

    digits, digits_dir, digits_choices = compose_run(
        ["trainer.epochs=1", "trainer.progress_bar=false", "logger=none"], tmp_path / "out"
    )
    assert "data_archives" not in run(digits, digits_dir, digits_choices)  # not an archive
