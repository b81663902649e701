"""The real perf_analyzer 2.60.0, fetched reproducibly and runnable on this machine.

    from freshrec.offline.benchmarks.perf_analyzer import perf_analyzer_command
    argv = perf_analyzer_command() + ["-m", "recommend", "-i", "grpc", ...]

PyPI's `perf-analyzer==2.60.0` has only a manylinux_2_38 wheel (a plain `pip install` on an older
glibc picks a useless 0.1.0 placeholder). Its binary needs glibc 2.38 and GLIBCXX_3.4.32. So:

* the wheel is fetched with `pip download --platform manylinux_2_38_x86_64` (never installed) and
  verified by SHA-256; only `perf_analyzer/bin/perf_analyzer` is extracted;
* on glibc >= 2.38 the binary runs directly;
* on an older glibc (Debian 12 has 2.36) the Debian 13 (trixie) packages libc6, libstdc++6,
  libgcc-s1, libssl3t64 and zlib1g are fetched with `apt-get download` through a *private* apt
  configuration (its own sources list, lists and cache folders under the freshrec cache; the
  system's apt sources, lists and cache are never touched), verified by SHA-256, unpacked with
  `dpkg -x`, and the binary runs through that C library's loader:
  `<root>/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2 --library-path <root>/usr/lib/x86_64-linux-gnu perf_analyzer`.

Every download is pinned by version and SHA-256; a mismatch deletes the file and fails loudly.
Sources, in order: the cache, `$FRESHREC_WHEELHOUSE` (a folder holding the wheel and/or the .deb
files under their Debian file names, for offline machines), the network. `$FRESHREC_PERF_ANALYZER`
names a perf_analyzer binary to use as-is (e.g. the one in NGC's tritonserver SDK container).

Cache layout (root: `$FRESHREC_CACHE`, default ~/.cache/freshrec)::

    wheels/perf_analyzer-2.60.0-...whl   the verified wheel
    debs/*.deb                           the verified Debian packages
    apt-trixie/                          the private apt configuration, lists and cache
    perf_analyzer-2.60.0/bin/perf_analyzer  (+ marker)
    trixie-runtime-<pins digest>/usr/lib/x86_64-linux-gnu/...  (+ marker)
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from freshrec.assets import AssetError, WheelAsset, _check_sha256, cache_root, fetch_wheel
from freshrec.offline.machine import glibc_version

__all__ = [
    "DEBS",
    "PA_VERSION",
    "PA_WHEEL",
    "PerfAnalyzerUnavailable",
    "ensure_perf_analyzer",
    "glibc_version",
    "perf_analyzer_command",
    "perf_analyzer_version",
]

PA_VERSION = "2.60.0"
MARKER = ".freshrec-extracted"


class PerfAnalyzerUnavailable(AssetError):
    """perf_analyzer could not be fetched (no network, a pin that moved) or does not run."""


@dataclass(frozen=True)
class Pinned:
    name: str  # Debian package
    version: str
    filename: str  # as served (Debian: the epoch is %3a-escaped by apt-get download)
    sha256: str


# A manylinux_2_38 wheel: pip is told the platform, since this host's own tags (glibc 2.36) exclude it.
PA_WHEEL = WheelAsset(
    "perf-analyzer",
    PA_VERSION,
    "perf_analyzer-2.60.0-py3-none-manylinux_2_38_x86_64.whl",
    "23ef56b107ae9233e5cf09fbdf508dd9b936a52f1bae2f63f53c8117087b3f25",
    pip_args=("--platform", "manylinux_2_38_x86_64", "--python-version", "3.11"),
)
PA_MEMBER = "perf_analyzer/bin/perf_analyzer"
PA_MIN_GLIBC = (2, 38)

# Debian 13 (trixie), amd64, as fetched from deb.debian.org on 2026-11-28. Debian replaces a
# package in `trixie` at each point release; if a pin is gone from the mirror, `apt-get download`
# fails and the error says so: re-pin the versions and hashes below (or drop the .deb files into
# $FRESHREC_WHEELHOUSE).
DEBIAN_SUITES = ("trixie", "trixie-updates")
DEBIAN_SECURITY_SUITE = "trixie-security"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
DEBS: tuple[Pinned, ...] = (
    Pinned("libc6", "2.41-12+deb13u5", "libc6_2.41-12+deb13u5_amd64.deb",
           "b59b0625cd1a791375d40dab23a4d5d3d0641e3d0a773501becdc3725b7f99cf"),
    Pinned("libstdc++6", "14.2.0-19", "libstdc++6_14.2.0-19_amd64.deb",
           "ab1fa05837aa7a92aae748fd07a18a35f7d18bb4a71c4724fe2bbf0e32089de0"),
    Pinned("libgcc-s1", "14.2.0-19", "libgcc-s1_14.2.0-19_amd64.deb",
           "3c71917b490d1a17aed43196a2787a256ecf060526cdb20216a74bedc061b150"),
    Pinned("libssl3t64", "3.5.9-1~deb13u1", "libssl3t64_3.5.9-1~deb13u1_amd64.deb",
           "ffefb9af363e0e4592251b2533eb06453c8e470f7772e40263c4b2129251a6d5"),
    Pinned("zlib1g", "1:1.3.dfsg+really1.3.1-1+deb13u1", "zlib1g_1%3a1.3.dfsg+really1.3.1-1+deb13u1_amd64.deb",
           "8c27c342230503b73dfde629642c3b352e87b554e06d60cf58772f236a305ceb"),
)  # fmt: skip
LIB_DIR = "usr/lib/x86_64-linux-gnu"
LOADER = "ld-linux-x86-64.so.2"

_NETWORK_HINT = (
    "perf_analyzer is fetched once from PyPI (pip download) and, on glibc < 2.38, from deb.debian.org "
    "(apt-get download); this machine could not reach them. Put the files below into a folder and set "
    "FRESHREC_WHEELHOUSE to it, or set FRESHREC_PERF_ANALYZER to a perf_analyzer binary that runs here: "
)


def _log(msg: str) -> None:
    print(f"freshrec: {msg}", file=sys.stderr, flush=True)


def _verify(path: Path, pin: Pinned, source: str) -> None:
    """freshrec.assets' checksum check (mismatch: the file is deleted), as PerfAnalyzerUnavailable."""
    try:
        _check_sha256(path, pin, f"{source} ({pin.name} {pin.version})")
    except AssetError as e:
        raise PerfAnalyzerUnavailable(str(e)) from None


def _from_wheelhouse(pin: Pinned, dest: Path) -> bool:
    house = os.environ.get("FRESHREC_WHEELHOUSE")
    candidate = Path(house).expanduser() / pin.filename if house else None
    if candidate is None or not candidate.is_file():
        return False
    tmp = dest.with_name(f".{dest.name}.tmp")
    shutil.copyfile(candidate, tmp)
    _verify(tmp, pin, f"wheelhouse {candidate}")
    os.replace(tmp, dest)
    return True


# -- the wheel -----------------------------------------------------------------------------------
def _fetch_wheel() -> Path:
    """The verified, cached wheel (freshrec.assets.fetch_wheel: cache, FRESHREC_WHEELHOUSE, pip)."""
    try:
        return fetch_wheel(PA_WHEEL)
    except AssetError as e:
        raise PerfAnalyzerUnavailable(f"{e}\n{_NETWORK_HINT}{PA_WHEEL.filename}") from e


def _install(folder: Path, fill, marker: str) -> None:
    """Fills a fresh folder beside `folder` (`fill(tmp)`), writes the marker, then swaps it in by
    rename, so a reader sees the old folder or the complete new one, never a half-written one."""
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}-"))
    try:
        fill(tmp)
        (tmp / MARKER).write_text(marker + "\n")
        tmp.chmod(0o755)
        if folder.exists():
            shutil.rmtree(folder)
        os.rename(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _binary() -> Path:
    """The extracted, executable perf_analyzer binary (from the verified wheel)."""
    folder = cache_root() / f"perf_analyzer-{PA_VERSION}"
    binary = folder / "bin" / "perf_analyzer"
    marker = folder / MARKER
    if binary.is_file() and marker.is_file() and marker.read_text().strip() == PA_WHEEL.sha256:
        return binary
    wheel = _fetch_wheel()
    folder.parent.mkdir(parents=True, exist_ok=True)

    def fill(tmp: Path) -> None:
        (tmp / "bin").mkdir()
        with zipfile.ZipFile(wheel) as zf, zf.open(PA_MEMBER) as src, open(tmp / "bin" / "perf_analyzer", "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        (tmp / "bin" / "perf_analyzer").chmod(0o755)

    _install(folder, fill, PA_WHEEL.sha256)
    return binary


# -- the Debian 13 runtime -------------------------------------------------------------------------
def _apt_options(root: Path) -> list[str]:
    """apt-get options that make it read and write only below `root` (no system sources/lists/cache)."""
    return [
        "-o", f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={root / 'sources.list.d'}",
        "-o", f"Dir::Etc::Preferences={root / 'preferences'}",
        "-o", f"Dir::Etc::PreferencesParts={root / 'preferences.d'}",
        "-o", f"Dir::State::Lists={root / 'lists'}",
        "-o", f"Dir::Cache={root / 'cache'}",
        "-o", "Dir::Cache::pkgcache=",
        "-o", "Dir::Cache::srcpkgcache=",
        "-o", "APT::Architecture=amd64",
        "-o", "APT::Architectures=amd64",
        "-o", "APT::Sandbox::User=root",
        "-o", "Debug::NoLocking=1",
        "-o", "Acquire::Languages=none",
        "-o", "Acquire::Retries=2",
    ]  # fmt: skip


def _apt_download(missing: list[Pinned], dest: Path) -> None:
    if shutil.which("apt-get") is None:
        raise PerfAnalyzerUnavailable(
            "glibc < 2.38 and no apt-get to fetch the Debian 13 C library perf_analyzer needs. "
            f"{_NETWORK_HINT}{', '.join(p.filename for p in missing)}"
        )
    if not Path(DEBIAN_KEYRING).is_file():
        raise PerfAnalyzerUnavailable(f"{DEBIAN_KEYRING} is missing (package debian-archive-keyring); apt cannot verify trixie")
    root = cache_root() / "apt-trixie"
    for sub in ("sources.list.d", "preferences.d", "lists/partial", "cache/archives/partial"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = [f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_MIRROR} {s} main" for s in DEBIAN_SUITES]
    lines.append(f"deb [signed-by={DEBIAN_KEYRING}] {DEBIAN_SECURITY_MIRROR} {DEBIAN_SECURITY_SUITE} main")
    (root / "sources.list").write_text("\n".join(lines) + "\n")
    opts = _apt_options(root)
    _log("apt-get update (private lists for Debian 13 trixie under the freshrec cache) ...")
    proc = subprocess.run(["apt-get", *opts, "update"], capture_output=True, text=True)
    failed = proc.returncode != 0 or any(line.startswith(("Err:", "W: Failed", "E: ")) for line in proc.stdout.splitlines() + proc.stderr.splitlines())
    if failed and not any((root / "lists").glob("*trixie_main_binary-amd64_Packages*")):
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise PerfAnalyzerUnavailable(f"apt-get update of the private trixie sources failed. {_NETWORK_HINT}"
                                      f"{', '.join(p.filename for p in missing)}\n{tail}")  # fmt: skip
    with tempfile.TemporaryDirectory(dir=dest, prefix=".apt-") as tmp:
        wanted = [f"{p.name}={p.version}" for p in missing]
        _log(f"apt-get download {' '.join(wanted)} ...")
        proc = subprocess.run(["apt-get", *opts, "download", *wanted], capture_output=True, text=True, cwd=tmp)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
            raise PerfAnalyzerUnavailable(
                f"apt-get download of the pinned Debian 13 packages failed (exit {proc.returncode}). If a pinned version "
                "left the mirror (Debian replaces packages at each point release), re-pin DEBS in "
                f"freshrec/perf_analyzer.py (version and SHA-256).\n{tail}"
            )
        for pin in missing:
            got = Path(tmp) / pin.filename
            if not got.is_file():
                have = sorted(os.listdir(tmp))
                raise PerfAnalyzerUnavailable(f"apt-get download gave {have}, not {pin.filename}")
            _verify(got, pin, "apt-get download (deb.debian.org)")
            os.replace(got, dest / pin.filename)


def _debs() -> list[Path]:
    dest = cache_root() / "debs"
    dest.mkdir(parents=True, exist_ok=True)
    missing = []
    for pin in DEBS:
        path = dest / pin.filename
        if path.is_file():
            try:
                _verify(path, pin, f"cache {path}")
                continue
            except PerfAnalyzerUnavailable as e:
                _log(f"{e}; fetching it again")
        if not _from_wheelhouse(pin, path):
            missing.append(pin)
    if missing:
        _apt_download(missing, dest)
    return [dest / p.filename for p in DEBS]


def _runtime() -> Path:
    """Folder where the pinned Debian 13 packages are unpacked (dpkg -x); returns its root."""
    digest = hashlib.sha256("".join(p.sha256 for p in DEBS).encode()).hexdigest()[:12]
    folder = cache_root() / f"trixie-runtime-{digest}"
    marker = folder / MARKER
    if (folder / LIB_DIR / LOADER).is_file() and marker.is_file() and marker.read_text().strip() == digest:
        return folder
    if shutil.which("dpkg") is None:
        raise PerfAnalyzerUnavailable("dpkg is needed to unpack the Debian 13 C library for perf_analyzer (glibc < 2.38)")
    debs = _debs()

    def fill(tmp: Path) -> None:
        for deb in debs:
            proc = subprocess.run(["dpkg", "-x", str(deb), str(tmp)], capture_output=True, text=True)
            if proc.returncode != 0:
                raise PerfAnalyzerUnavailable(f"dpkg -x {deb.name} failed: {proc.stderr.strip()}")

    _install(folder, fill, digest)
    return folder


# -- public ----------------------------------------------------------------------------------------
def ensure_perf_analyzer() -> list[str]:
    """Fetches what is missing (see the module docstring) and returns the argv prefix; raises
    PerfAnalyzerUnavailable with a clear message if it cannot."""
    override = os.environ.get("FRESHREC_PERF_ANALYZER")
    if override:
        if not (Path(override).is_file() and os.access(override, os.X_OK)):
            raise PerfAnalyzerUnavailable(f"FRESHREC_PERF_ANALYZER={override} is not an executable file")
        return [override]
    root_dir = cache_root()
    root_dir.mkdir(parents=True, exist_ok=True)
    # One fetcher at a time (pytest-xdist workers, parallel benches): they share the apt lists,
    # the downloads and the extracted folders.
    with open(root_dir / ".perf_analyzer.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        binary = _binary()
        glibc = glibc_version()
        if glibc is not None and glibc >= PA_MIN_GLIBC:
            return [str(binary)]
        root = _runtime()
    libs = root / LIB_DIR
    return [str(libs / LOADER), "--library-path", str(libs), str(binary)]


_checked: dict[str, list[str]] = {}


def perf_analyzer_command() -> list[str]:
    """The argv prefix that runs perf_analyzer 2.60.0 here (checked once per process with --version)."""
    key = os.environ.get("FRESHREC_PERF_ANALYZER", "") + "|" + str(cache_root())
    if key in _checked:
        return list(_checked[key])
    argv = ensure_perf_analyzer()
    proc = subprocess.run([*argv, "--version"], capture_output=True, text=True)
    if proc.returncode != 0 or "Perf Analyzer" not in proc.stdout + proc.stderr:
        raise PerfAnalyzerUnavailable(f"perf_analyzer does not run here: {' '.join(argv)} --version -> exit {proc.returncode}: "
                                      f"{(proc.stdout + proc.stderr).strip()[-600:]}")  # fmt: skip
    _checked[key] = argv
    return list(argv)


def perf_analyzer_version(argv: list[str] | None = None) -> str:
    """The version line perf_analyzer prints, plus the pinned wheel version (its binary says 0.0.0)."""
    argv = argv or perf_analyzer_command()
    out = subprocess.run([*argv, "--version"], capture_output=True, text=True)
    line = (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr).strip() else "?"
    return f"{PA_WHEEL.name}=={PA_VERSION} wheel ({line})" if not os.environ.get("FRESHREC_PERF_ANALYZER") else line
