"""`freshrec export`: a build's checkpoints -> checked ONNX files -> both repository flavours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from freshrec.export.onnx_export import export_all
from freshrec.export.repository import version_dir, write_repository

from freshrec.config import DeployConfig

FLAVOURS = ("embedded", "ngc")


def export_build(build_dir: Path, repository: Path, device: str = "cpu", state_url: str | None = None, log=print) -> dict:
    """Exports every model of a build and writes `<repository>/<flavour>/` for each flavour.

    The state URL defaults to the build's SQLite file; `freshrec serve --state` or the
    FRESHREC_STATE variable override it per deployment.
    """
    from freshrec.models.checkpoints import CHECKPOINTS, load_models

    build_dir = Path(build_dir).resolve()
    cfg, modules, minilm = load_models(build_dir)
    report = export_all(modules, cfg, build_dir / "onnx", log=log)
    state_url = state_url or f"sqlite:///{build_dir / 'state.db'}"
    repos = {}
    for flavour in FLAVOURS:
        deploy = DeployConfig(flavour=flavour, device=device, state=state_url)
        repos[flavour] = str(write_repository(Path(repository).resolve() / flavour, build_dir / "onnx", cfg, deploy, minilm))
        # The version's checkpoints travel with it: `freshrec update` fine-tunes from them.
        shutil.copytree(build_dir / CHECKPOINTS, version_dir(repos[flavour], "recommend", deploy.version) / CHECKPOINTS)
        log(f"model repository ({flavour}, {device}): {repos[flavour]}")
    out = {"models": report, "repositories": repos, "state": state_url}
    (build_dir / "export.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    return out
