"""Fetching perf_analyzer (freshrec/offline/benchmarks/perf_analyzer.py): pins, the private apt
configuration, checksums."""

from __future__ import annotations

from pathlib import Path

import pytest


# -- fetching perf_analyzer ------------------------------------------------------------------------
def test_pins_and_private_apt_options(tmp_path: Path) -> None:
    from freshrec.offline.benchmarks import perf_analyzer as pa

    assert pa.PA_WHEEL.version == "2.60.0" and len(pa.PA_WHEEL.sha256) == 64
    assert {d.name for d in pa.DEBS} == {"libc6", "libstdc++6", "libgcc-s1", "libssl3t64", "zlib1g"}
    assert all(len(d.sha256) == 64 and d.filename.endswith("_amd64.deb") for d in pa.DEBS)
    opts = pa._apt_options(tmp_path)
    dirs = [o.split("=", 1)[1] for o in opts if o.startswith("Dir::") and "=" in o and o.split("=", 1)[1]]
    assert dirs and all(d.startswith(str(tmp_path)) for d in dirs)  # never the system's apt sources, lists or cache
    assert pa.glibc_version() is None or pa.glibc_version() >= (2, 17)


def test_checksum_mismatch_fails_loudly_and_deletes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from freshrec.offline.benchmarks import perf_analyzer as pa

    house = tmp_path / "house"
    house.mkdir()
    (house / pa.PA_WHEEL.filename).write_bytes(b"not the wheel")
    monkeypatch.setenv("FRESHREC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FRESHREC_WHEELHOUSE", str(house))
    monkeypatch.delenv("FRESHREC_PERF_ANALYZER", raising=False)
    with pytest.raises(pa.PerfAnalyzerUnavailable, match="SHA-256 mismatch"):
        pa.ensure_perf_analyzer()
    assert not (tmp_path / "cache" / "wheels" / pa.PA_WHEEL.filename).exists()
    assert (house / pa.PA_WHEEL.filename).exists()  # the user's file is left alone
