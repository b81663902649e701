"""`freshrec export`: a build's checkpoints -> checked ONNX files -> both repository flavours."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from freshrec.export.onnx_export import export_all
from freshrec.export.repository import version_dir, versions, write_repository

from freshrec.config import DeployConfig

FLAVOURS = ("embedded", "ngc")


class LaterVersions(Exception):
    """The repository holds versions written by `freshrec update` that an export would replace."""


def export_build(build_dir: Path, repository: Path, device: str = "cpu", state_url: str | None = None, log=print,
                 replace_versions: bool = False) -> dict:  # fmt: skip
    """Exports every model of a build and writes `<repository>/<flavour>/` for each flavour.

    The state URL defaults to the build's SQLite file; `freshrec serve --state` or the
    FRESHREC_STATE variable override it per deployment. A repository that already holds versions
    after the build's (written by `freshrec update`) is refused unless `replace_versions`: the
    export writes version 1 alone (a new build starts over with its own state, and passes it).
    """
    from freshrec.contract import TOPICS_FILE
    from freshrec.models.checkpoints import CHECKPOINTS, load_models

    later = {f: [v for v in versions(Path(repository) / f) if v > 1] for f in FLAVOURS if (Path(repository) / f / "recommend").is_dir()}
    later = {f: v for f, v in later.items() if v}
    if later and not replace_versions:
        found = "; ".join(f"{f}: {', '.join(map(str, v))}" for f, v in later.items())
        raise LaterVersions(f"{repository} holds model versions written by `freshrec update` ({found}); exporting the "
                            "build writes version 1 alone and would delete them. Export into another --repository, "
                            "or pass --replace-versions to start over from the build")  # fmt: skip
    build_dir = Path(build_dir).resolve()
    cfg, modules, minilm = load_models(build_dir)
    report = export_all(modules, cfg, build_dir / "onnx", log=log)
    state_url = state_url or f"sqlite:///{build_dir / 'state.db'}"
    repos = {}
    topics = build_dir / CHECKPOINTS / TOPICS_FILE
    for flavour in FLAVOURS:
        deploy = DeployConfig(flavour=flavour, device=device, state=state_url)
        repos[flavour] = str(write_repository(Path(repository).resolve() / flavour, build_dir / "onnx", cfg, deploy, minilm,
                                              topics if topics.exists() else None))  # fmt: skip
        # The version's checkpoints travel with it: `freshrec update` fine-tunes from them.
        shutil.copytree(build_dir / CHECKPOINTS, version_dir(repos[flavour], "recommend", deploy.version) / CHECKPOINTS)
        log(f"model repository ({flavour}, {device}): {repos[flavour]}")
    out = {"models": report, "repositories": repos, "state": state_url}
    (build_dir / "export.json").write_text(json.dumps(out, indent=2, sort_keys=True))
    return out
