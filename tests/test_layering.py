"""Keeps the import table of shared STYLE.md true: which of our packages may import which, and where heavy
libraries may be imported. An `ast` scan of every module, function-local imports included."""

from __future__ import annotations

import ast
import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
OURS = ["configs", "data_shards", "eval", "cluster", "trainer", "launcher"]
ALLOWED = {
    "configs": set(),
    "data_shards": {"configs"},
    "eval": {"configs", "data_shards"},
    "cluster": {"configs"},
    "trainer": {"configs", "data_shards"},
    "launcher": {"configs", "data_shards", "eval", "cluster", "trainer"},
}
# the data_shards modules the services may import: the contracts (shard format, run layout), storage, the JSONL
# log, and the reader with its decode stages; never the builder, its Ray tasks or the synthetic city (eval's
# text probe and land-use check read the toolkit's inputs and the synthetic city's words on purpose)
SHARED = ("data_shards.format", "data_shards.run_layout", "data_shards.storage", "data_shards.jsonl_log",
          "data_shards.reader", "data_shards.tokenize", "data_shards.augment")
SERVICE_MAY_IMPORT = {
    "trainer": SHARED,
    "eval": SHARED + ("data_shards.records", "data_shards.sources", "data_shards.splits", "data_shards.synth_text"),
}
# contract modules that both services import: standard library, configs and storage only (no torch, no open_clip)
CONTRACTS = {"data_shards/format.py", "data_shards/run_layout.py", "data_shards/jsonl_log.py"}
CONTRACT_MAY_IMPORT = ("configs", "data_shards.format", "data_shards.storage")
# heavy library -> the modules (path prefixes, relative to the repo) allowed to import it
HEAVY = {
    "fsspec": ("data_shards/storage.py",),
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
        if top == "data_shards" and pkg in SERVICE_MAY_IMPORT:
            assert name in SERVICE_MAY_IMPORT[pkg], f"{rel}:{lineno}: {pkg} may not import {name}"


@pytest.mark.parametrize("rel", sorted(CONTRACTS))
def test_contract_modules_import_only_the_standard_library_configs_and_storage(rel):
    for lineno, name in _imports(ROOT / rel):
        top = name.split(".")[0]
        ok = top in sys.stdlib_module_names or top == "__future__" or name.startswith(CONTRACT_MAY_IMPORT)
        assert ok, f"{rel}:{lineno}: a shared contract module may not import {name}"


@pytest.mark.parametrize("pkg", OURS)
def test_packages_resolve_inside_the_repo(pkg):
    mod = importlib.import_module(pkg)
    assert Path(mod.__file__).resolve().parent == ROOT / pkg


def test_every_module_has_a_docstring():
    missing = [str(p.relative_to(ROOT)) for _, p in _modules()
               if p.read_text().strip() and ast.get_docstring(ast.parse(p.read_text())) is None]
    assert not missing, f"modules without a docstring: {missing}"
