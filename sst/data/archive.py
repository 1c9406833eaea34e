"""Unpack dataset archives once into a cache, and find the split folders inside."""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on POSIX
    fcntl = None  # type: ignore[assignment]

MARKER_SUFFIX = ".unpacked"
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")


def archive_stem(archive: str | Path) -> str:
    """File name without its archive suffix: ``cifar10-jpeg.tar.gz`` -> ``cifar10-jpeg``."""
    name = Path(archive).name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


@contextlib.contextmanager
def _locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive file lock so concurrent processes unpack one at a time."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


_recording: list[list[dict[str, Any]]] = []


@contextlib.contextmanager
def recorded_archives() -> Iterator[list[dict[str, Any]]]:
    """Collects, into the list it yields, every archive ``unpack_once`` reads while the
    block runs (``path``, ``size_bytes``, ``mtime_ns`` and the cache's ``fingerprint``):
    a run records in its summary exactly which archive it trained on."""
    found: list[dict[str, Any]] = []
    _recording.append(found)
    try:
        yield found
    finally:
        _recording.remove(found)


def _record(archive: Path, wanted: str) -> None:
    stat = archive.stat()
    entry = {
        "path": str(archive.resolve()),
        "size_bytes": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "fingerprint": wanted,
    }
    for found in _recording:
        if entry not in found:
            found.append(entry)


def fingerprint(archive: Path) -> str:
    """What identifies an archive's content for the cache: its resolved path, size and
    modification time (an archive replaced under the same name is unpacked again)."""
    stat = archive.stat()
    return f"{archive.resolve()} {stat.st_size} {stat.st_mtime_ns}"


def _extract(archive: Path, dest: Path) -> None:
    try:
        _extract_members(archive, dest)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ValueError(f"the archive {archive} cannot be unpacked: {error}") from error


def _extract_members(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
            return
        for member in tar.getmembers():  # pragma: no cover - Python < 3.10.12
            parts = Path(member.name).parts
            if member.name.startswith("/") or ".." in parts or member.issym() or member.islnk():
                raise ValueError(f"refusing unsafe archive member {member.name!r} in {archive}")
        tar.extractall(dest)  # pragma: no cover


def unpack_once(archive: str | Path, cache_dir: str | Path) -> Path:
    """Extract ``archive`` into ``cache_dir/<stem>/`` unless already done; return that folder.

    Extraction goes to a temporary folder in ``cache_dir`` that is renamed into
    place; a marker file ``cache_dir/<stem>.unpacked`` written afterwards holds the
    archive's ``fingerprint``: an interrupted extraction, or another archive under the
    same name, is unpacked again on the next call.
    """
    archive = Path(archive).expanduser()
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive}")
    cache = Path(cache_dir).expanduser()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"the cache folder {cache} for unpacked archives cannot be made ({error}): set "
            "SST_CACHE_DIR to a writable folder"
        ) from error
    stem = archive_stem(archive)
    target = cache / stem
    marker = cache / (stem + MARKER_SUFFIX)
    wanted = fingerprint(archive)

    def unpacked() -> bool:
        return marker.is_file() and target.is_dir() and marker.read_text().strip() == wanted

    _record(archive, wanted)
    if unpacked():
        return target
    with _locked(cache / (stem + ".lock")):
        if unpacked():
            return target
        marker.unlink(missing_ok=True)
        if target.exists():
            shutil.rmtree(target)  # left over from an interrupted run
        tmp = Path(tempfile.mkdtemp(prefix=f".{stem}-", dir=cache))
        try:
            _extract(archive, tmp)
            tmp.chmod(0o755)  # mkdtemp makes it private
            os.replace(tmp, target)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        marker.write_text(f"{wanted}\n")
    return target


def _split_root(folder: Path, train_dir: str, test_dir: str) -> Path | None:
    """The folder (``folder`` or one level below) that holds both split folders."""
    candidates = [folder, *sorted(p for p in folder.iterdir() if p.is_dir())]
    for candidate in candidates:
        if (candidate / train_dir).is_dir() and (candidate / test_dir).is_dir():
            return candidate
    return None


def cache_dir() -> Path:
    """Where archives are unpacked: ``$SST_CACHE_DIR`` or ``~/.cache/sst``."""
    return Path(os.environ.get("SST_CACHE_DIR") or "~/.cache/sst").expanduser()


def find_split_root(
    source: str | Path, train_dir: str = "train", test_dir: str = "test"
) -> Path | None:
    """The folder holding ``train_dir/`` and ``test_dir/`` of an image-folder data set given
    as a folder or as a ``.tar.gz``/``.tar`` archive (unpacked once into ``cache_dir()``);
    None when ``source`` does not exist or holds no such pair."""
    source = Path(source).expanduser()
    if source.is_dir():
        return _split_root(source, train_dir, test_dir)
    if source.is_file():
        return _split_root(unpack_once(source, cache_dir()), train_dir, test_dir)
    return None
