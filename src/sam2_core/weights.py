"""Official SAM 2 / 2.1 checkpoints: where they come from, where they are cached, how to get them.

Downloads stream to ``<name>.part`` next to the final file, are checked for size and SHA-256,
then renamed, so an interrupted or corrupted download never looks complete. Offline (no
network, or ``NAPARI_SAM2_OFFLINE=1``) nothing is fetched and the error says which URL to
download elsewhere and the exact path to copy the file to (or ``napari-sam2 models import``).
The cache is ``$NAPARI_SAM2_HOME/checkpoints`` or the user cache dir (platformdirs).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import socket
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

_logger = logging.getLogger(__name__)
_BASE = "https://dl.fbaipublicfiles.com/segment_anything_2"


class WeightsError(RuntimeError):
    """Weights could not be obtained or verified."""


class OfflineError(WeightsError):
    """The weights are not cached and cannot be downloaded here."""


class ChecksumError(WeightsError):
    """A file's SHA-256 is not the published one."""


@dataclass(frozen=True)
class WeightSpec:
    """An official checkpoint file."""

    name: str
    url: str
    sha256: str
    num_bytes: int | None

    @property
    def filename(self) -> str:
        return self.url.rsplit("/", 1)[-1]


OFFICIAL_WEIGHTS: dict[str, WeightSpec] = {
    s.name: s
    for s in (
        WeightSpec("sam2.1_hiera_tiny", f"{_BASE}/092824/sam2.1_hiera_tiny.pt",
                   "7402e0d864fa82708a20fbd15bc84245c2f26dff0eb43a4b5b93452deb34be69", 156_008_466),
        WeightSpec("sam2.1_hiera_small", f"{_BASE}/092824/sam2.1_hiera_small.pt",
                   "6d1aa6f30de5c92224f8172114de081d104bbd23dd9dc5c58996f0cad5dc4d38", 184_416_285),
        WeightSpec("sam2.1_hiera_base_plus", f"{_BASE}/092824/sam2.1_hiera_base_plus.pt",
                   "a2345aede8715ab1d5d31b4a509fb160c5a4af1970f199d9054ccfb746c004c5", 323_606_802),
        WeightSpec("sam2.1_hiera_large", f"{_BASE}/092824/sam2.1_hiera_large.pt",
                   "2647878d5dfa5098f2f8649825738a9345572bae2d4350a2468587ece47dd318", 898_083_611),
        WeightSpec("sam2_hiera_tiny", f"{_BASE}/072824/sam2_hiera_tiny.pt",
                   "65b50056e05bcb13694174f51bb6da89c894b57b75ccdf0ba6352c597c5d1125", 155_906_050),
        WeightSpec("sam2_hiera_small", f"{_BASE}/072824/sam2_hiera_small.pt",
                   "95949964d4e548409021d47b22712d5f1abf2564cc0c3c765ba599a24ac7dce3", None),
        WeightSpec("sam2_hiera_base_plus", f"{_BASE}/072824/sam2_hiera_base_plus.pt",
                   "d0bb7f236400a49669ffdd1be617959a8b1d1065081789d7bbff88eded3a8071", None),
        WeightSpec("sam2_hiera_large", f"{_BASE}/072824/sam2_hiera_large.pt",
                   "7442e4e9b732a508f80e141e7c2913437a3610ee0c77381a66658c3a445df87b", 897_952_466),
    )
}

Progress = Callable[[int, "int | None"], None]


def spec(name: str) -> WeightSpec:
    """The official spec for a name, or a WeightsError listing the known names."""
    try:
        return OFFICIAL_WEIGHTS[name]
    except KeyError:
        raise WeightsError(f"no official weights named {name!r}; known: {', '.join(OFFICIAL_WEIGHTS)}") from None


def cache_dir() -> Path:
    """Folder for downloaded checkpoints (created on demand)."""
    root = os.environ.get("NAPARI_SAM2_HOME")
    if not root:
        import platformdirs

        root = platformdirs.user_cache_dir("napari-sam2")
    path = Path(root) / "checkpoints"
    path.mkdir(parents=True, exist_ok=True)
    return path


def cached_path(name: str) -> Path:
    """Where the file for an official name lives in the cache (it may not exist)."""
    return cache_dir() / spec(name).filename


def is_cached(name: str) -> bool:
    """The file is present with the published size (not re-hashed)."""
    s, path = spec(name), cached_path(name)
    return path.is_file() and (s.num_bytes is None or path.stat().st_size == s.num_bytes)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _offline_message(s: WeightSpec, reason: str) -> str:
    return (
        f"cannot download {s.name} ({reason}). On a machine with internet, download {s.url} "
        f"and copy it to {cache_dir() / s.filename}, or run `napari-sam2 models import FILE` "
        "(sam2_core.weights.import_checkpoint(FILE)); the SHA-256 is checked either way."
    )


def _marker(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def _tqdm_progress(total: int | None, desc: str) -> tuple[Progress, Callable[[], None]]:
    from tqdm import tqdm

    bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
    last = [0]

    def update(done: int, _total: int | None) -> None:
        bar.update(done - last[0])
        last[0] = done

    return update, bar.close


def download(
    name: str,
    *,
    url: str | None = None,
    dest: str | os.PathLike | None = None,
    progress: bool | Progress = True,
    timeout: float = 30.0,
    force: bool = False,
) -> Path:
    """Download (or reuse) the official checkpoint ``name``; returns its verified path.

    Args:
        url: fetch from here instead of the official URL (mirrors, tests).
        dest: final path (default: the cache).
        progress: True for a tqdm bar on stderr, or a callable ``(done_bytes, total_bytes)``.
        timeout: network timeout in seconds.
        force: download even if a verified file is present.

    Raises:
        OfflineError: no network (fast), ChecksumError: wrong hash, WeightsError: HTTP error
        or incomplete transfer. No partial file is left behind in any case.
    """
    s = spec(name)
    final = Path(dest) if dest is not None else cache_dir() / s.filename
    if not force and final.is_file() and _verified(final, s):
        return final
    if os.environ.get("NAPARI_SAM2_OFFLINE", "").strip() not in ("", "0"):
        raise OfflineError(_offline_message(s, "NAPARI_SAM2_OFFLINE is set"))
    url = url or s.url
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, part = tempfile.mkstemp(prefix=final.name + ".", suffix=".part", dir=final.parent)
    os.close(fd)
    part_path = Path(part)
    close_bar = None
    try:
        try:
            response = urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (https/http only)
        except urllib.error.HTTPError as e:
            raise WeightsError(f"download of {url} failed: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, socket.timeout, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise OfflineError(_offline_message(s, f"{url} unreachable: {reason}")) from None
        with response:
            length = response.headers.get("Content-Length")
            total = int(length) if length else s.num_bytes
            if progress is True:
                report, close_bar = _tqdm_progress(total, s.filename)
            elif callable(progress):
                report = progress
            else:
                report = lambda done, tot: None  # noqa: E731
            done = 0
            h = hashlib.sha256()
            with open(part_path, "wb") as f:
                while True:
                    try:
                        block = response.read(1 << 20)
                    except (socket.timeout, OSError) as e:
                        raise WeightsError(f"download of {url} was interrupted ({e}); try again") from None
                    if not block:
                        break
                    f.write(block)
                    h.update(block)
                    done += len(block)
                    report(done, total)
        expected = s.num_bytes if s.num_bytes is not None else (int(length) if length else None)
        if (length and done != int(length)) or (expected is not None and done != expected):
            raise WeightsError(
                f"download of {url} is incomplete: got {done} bytes, expected {expected or length}; try again"
            )
        digest = h.hexdigest()
        if digest != s.sha256:
            raise ChecksumError(f"{url}: SHA-256 {digest} does not match the published {s.sha256}; file discarded")
        os.replace(part_path, final)
        _marker(final).write_text(s.sha256)
        _logger.info("downloaded %s to %s", s.name, final)
        return final
    finally:
        if close_bar is not None:
            close_bar()
        part_path.unlink(missing_ok=True)


def _verified(path: Path, s: WeightSpec) -> bool:
    """True if ``path`` has the published hash (remembered in a marker file after one check)."""
    marker = _marker(path)
    if marker.is_file() and marker.read_text().strip() == s.sha256 and marker.stat().st_mtime >= path.stat().st_mtime:
        return True
    if sha256_file(path) == s.sha256:
        marker.write_text(s.sha256)
        return True
    return False


def ensure_weights(name: str, *, allow_download: bool = True, progress: bool | Progress = True) -> Path:
    """The verified local file for ``name``: from the cache, else downloaded if allowed.

    Raises:
        ChecksumError: a cached file is damaged (it is not deleted; the message says what to do).
        OfflineError: not cached and downloading is not possible or not allowed.
    """
    s = spec(name)
    path = cache_dir() / s.filename
    if path.is_file():
        if _verified(path, s):
            return path
        raise ChecksumError(
            f"cached {path} does not have the published SHA-256 ({s.sha256}): delete it and "
            f"download again (`napari-sam2 models download {name}`)"
        )
    if not allow_download:
        raise OfflineError(_offline_message(s, "downloading is disabled"))
    return download(name, progress=progress)


def import_checkpoint(path: str | os.PathLike, name: str | None = None) -> Path:
    """Copy a user's checkpoint file into the cache after checking its SHA-256.

    Args:
        path: the file (e.g. downloaded on another machine).
        name: the official name it must be; None identifies it by its hash.
    """
    src = Path(path)
    if not src.is_file():
        raise FileNotFoundError(f"no such checkpoint file: {src}")
    digest = sha256_file(src)
    if name is None:
        matches = [s for s in OFFICIAL_WEIGHTS.values() if s.sha256 == digest]
        if not matches:
            raise WeightsError(
                f"{src} is not one of the official SAM 2 checkpoints (SHA-256 {digest}); "
                f"use it directly with build_sam2(checkpoint={str(src)!r}) or the widget's checkpoint field"
            )
        s = matches[0]
    else:
        s = spec(name)
        if digest != s.sha256:
            raise ChecksumError(f"{src} has SHA-256 {digest}, not the published {s.sha256} of {s.name}")
    final = cache_dir() / s.filename
    fd, tmp = tempfile.mkstemp(prefix=final.name + ".", suffix=".part", dir=final.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, final)
    finally:
        Path(tmp).unlink(missing_ok=True)
    _marker(final).write_text(s.sha256)
    return final


def list_weights() -> list[dict]:
    """name, url, filename, path, cached, num_bytes of each official checkpoint."""
    return [
        {"name": s.name, "url": s.url, "filename": s.filename, "path": str(cache_dir() / s.filename),
         "cached": is_cached(s.name), "num_bytes": s.num_bytes}
        for s in OFFICIAL_WEIGHTS.values()
    ]
