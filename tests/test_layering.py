"""Keeps the import table of shared STYLE.md true: which of our packages may import which, and where heavy
libraries may be imported. An `ast` scan of every module, function-local imports included."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ["configs", "data_shards", "eval", "cluster", "trainer", "launcher"]
ALLOWED = {
    "configs": set(),
    "data_shards": {"configs"},
    "eval": {"configs", "data_shards"},
    "cluster": {"configs"},
    "trainer": {"configs", "data_shards", "eval"},
    "launcher": {"configs", "data_shards", "eval", "cluster", "trainer"},
}
# heavy library -> the modules (path prefixes, relative to the repo) allowed to import it
HEAVY = {
    "deepspeed": ("trainer/engine.py",),
    "ray": ("data_shards/build.py", "data_shards/ray_tasks.py", "launcher/ray_jobs.py", "cluster/"),
    "prometheus_client": ("trainer/metrics.py", "eval/metrics.py"),
    "webdataset": ("data_shards/",),
}


def _modules():
    for pkg in OURS:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            yield pkg, path


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module


@pytest.mark.parametrize("pkg,path", list(_modules()), ids=lambda v: str(v).replace(str(ROOT) + "/", ""))
def test_import_directions_and_heavy_libraries(pkg, path):
    rel = str(path.relative_to(ROOT))
    for lineno, name in _imports(path):
        top = name.split(".")[0]
        assert name != "eval", f"{rel}:{lineno}: `import eval` hides the builtin; write `from eval import ...`"
        if top in OURS and top != pkg:
            assert top in ALLOWED[pkg], f"{rel}:{lineno}: {pkg} may not import {top}"
        if top in HEAVY:
            assert rel.startswith(HEAVY[top]), f"{rel}:{lineno}: {top} may only be imported in {HEAVY[top]}"


@pytest.mark.parametrize("pkg", OURS)
def test_packages_resolve_inside_the_repo(pkg):
    mod = importlib.import_module(pkg)
    assert Path(mod.__file__).resolve().parent == ROOT / pkg


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(ROOT)) for _, p in _modules()
               if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"
