"""Dependencies point inward: the import graph of the distribution, read from the sources (every
import statement, also those inside functions), and what a server process actually imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Where each sub-package of the distribution lives (pyproject.toml's package-dir).
ROOTS = {"freshrec": REPO / "freshrec", "freshrec.export": REPO / "export", "freshrec.client": REPO / "client",
         "freshrec.server_ext": REPO / "server_ext"}  # fmt: skip
CORE = ("freshrec.config", "freshrec.contract", "freshrec.assets", "freshrec.arrays", "freshrec.progress")
# What each area may import besides itself and the core (a prefix match on module names).
ALLOWED: dict[str, tuple[str, ...]] = {
    "core": (),
    "freshrec.store": (),
    "freshrec.models": (),
    "freshrec.index": ("freshrec.store",),
    "freshrec.serving": ("freshrec.store", "freshrec.models", "freshrec.index"),
    "freshrec.export": ("freshrec.models",),
    "freshrec.client": (),
    "freshrec.server_ext": ("freshrec.store", "freshrec.models", "freshrec.index", "freshrec.serving"),
    "freshrec.training": ("freshrec.store", "freshrec.models", "freshrec.index", "freshrec.serving", "freshrec.export"),
    "freshrec.lifecycle": ("freshrec.store", "freshrec.models", "freshrec.index", "freshrec.serving", "freshrec.export",
                           "freshrec.training"),  # fmt: skip
    "freshrec.offline": ("freshrec.store", "freshrec.models", "freshrec.index", "freshrec.serving", "freshrec.export",
                         "freshrec.server_ext", "freshrec.client", "freshrec.training", "freshrec.lifecycle"),  # fmt: skip
}
ENTRY_POINTS = ("freshrec.cli", "freshrec.demo")  # commands: may reach every area


def modules() -> dict[str, Path]:
    out = {}
    for pkg, root in ROOTS.items():
        for f in root.rglob("*.py"):
            parts = list(f.relative_to(root).with_suffix("").parts)
            if pkg == "freshrec" and parts[0] in ("export", "client", "server_ext"):
                continue
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = f
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph = {}
    for name, path in mods.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in mods and m != name}
    return graph


def area(module: str) -> str:
    if module in CORE or module == "freshrec":
        return "core"
    for a in ALLOWED:
        if module == a or module.startswith(a + "."):
            return a
    raise AssertionError(f"{module} belongs to no area of the layout; add it to tests/test_layout.py")


def outward(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        if module in ENTRY_POINTS:
            continue
        mine = area(module)
        for target in targets:
            theirs = area(target)
            if theirs not in ("core", mine) and not any(target == p or target.startswith(p + ".") for p in ALLOWED[mine]):
                bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    # A package's __init__ re-exporting its modules is not a cycle of its own.
    edges = {m: {t for t in ts if not m.startswith(t + ".") and not t.startswith(m + ".")} for m, ts in graph.items()}
    state: dict[str, int] = {}
    stack: list[str] = []
    found = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(edges.get(m, ())):
            if state.get(t) == 1:
                found.append(stack[stack.index(t) :] + [t])
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(edges):
        if m not in state:
            visit(m)
    return found


def test_every_module_imports_only_inward():
    bad = outward(import_graph())
    assert not bad, "imports pointing outward:\n" + "\n".join(bad)


def test_no_import_cycles():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_a_server_process_loads_no_training_or_offline_code():
    """What the Python-backend stubs import (the pipeline adapter with both engines, the ONNX
    host, the topic model) and what the exporter imports, in a fresh interpreter; scikit-learn
    (the build's topic fit) is not among them either."""
    code = (
        "import sys\n"
        "import freshrec.server_ext.service, freshrec.server_ext.onnx_model, freshrec.export.pipeline, freshrec.models.topics\n"
        "print('\\n'.join(m for m in sys.modules if m.startswith(('freshrec.training', 'freshrec.offline', 'sklearn'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "", f"loaded at serve time: {out.stdout}"


def test_the_checks_catch_what_they_look_for():
    """On made-up graphs: a serving module importing training code, the old train-loading
    exporter, and the two circles the layout removed (eval <-> report, store.base <-> sqlite)."""
    assert outward({"freshrec.serving.pipeline": {"freshrec.training.train"}}) == [
        "freshrec.serving.pipeline (freshrec.serving) imports freshrec.training.train (freshrec.training)"
    ]
    assert outward({"freshrec.export.pipeline": {"freshrec.training.train"}})
    assert not outward({"freshrec.offline.evaluation.eval": {"freshrec.training.train"}, "freshrec.cli": {"freshrec.offline.evaluation.eval"}})
    assert cycles({"freshrec.offline.evaluation.eval": {"freshrec.offline.evaluation.report"},
                   "freshrec.offline.evaluation.report": {"freshrec.offline.evaluation.eval"}})  # fmt: skip
    assert cycles({"freshrec.store.base": {"freshrec.store.sqlite"}, "freshrec.store.sqlite": {"freshrec.store.base"}})
    assert not cycles({"freshrec.index": {"freshrec.index.hnsw"}, "freshrec.index.hnsw": set()})


def test_the_freshrec_command_is_the_only_entry_point():
    """Every command is `freshrec ...` (freshrec/cli.py): no module of the distribution is also a
    `python -m` script of its own."""
    scripts = sorted(name for name, path in modules().items()
                     if name != "freshrec.cli" and ("__main__" in path.name or 'if __name__ == "__main__"' in path.read_text()))  # fmt: skip
    assert not scripts, f"`python -m` entry points besides the freshrec command: {scripts}"
