"""The layers point down: every module's imports, read with ``ast``, go to its own layer or below.

    models      nouns: the flow document, its rules, the tables — pure
    activities  verbs: one process's side effects (beside them: scripts, the local peers)
    workflows   the participant as a process
    control     what the client does against Temporal and the database (enroll, ingest,
                lifecycle, flow storage, the dry run); reports beside it (statistics, diagram)
    worker      the worker process: workflows and activities, with control's enroll and ingest
    starter …   the programs on top: the CLI, the tracking service, the codec server, the flows
                console, the dev stack

Tests, benchmarks, the kit they share (testkit) and migrations sit outside: they may import
anything, and nothing in the layers imports them.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LAYERS = {
    "models": 0,
    "activities": 1,
    "scripts": 1,
    "peers": 1,
    "workflows": 2,
    "control": 3,
    "reports": 3,
    "worker": 4,
    "tracking": 5,
    "codec_server": 5,
    "console": 5,
    "starter": 5,
    "devstack": 5,
}
OUTSIDE = {"tests", "bench", "testkit", "migrations"}


def sources() -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT).parts
        if not any(part.startswith(".") for part in parts):
            yield path


def top(path: Path) -> str:
    """The top-level package or module a file belongs to."""
    first = path.relative_to(ROOT).parts[0]
    return first.removesuffix(".py")


def imports(path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, absolute module, names taken from it) for every import in the file, wherever it
    stands: at the top, in a function, under TYPE_CHECKING, in a sandbox pass-through."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.lineno, node.module, [alias.name for alias in node.names]


def test_every_package_has_a_layer() -> None:
    tops = {top(path) for path in sources()}
    assert tops - OUTSIDE - LAYERS.keys() == set(), "place new packages in LAYERS"
    assert "control" in tops and "reports" in tops


def test_no_module_imports_a_layer_above_its_own() -> None:
    wrong: list[str] = []
    for path in sources():
        own = top(path)
        if own in OUTSIDE:
            continue
        for line, module, _ in imports(path):
            target = module.split(".")[0]
            if target in OUTSIDE or (target in LAYERS and LAYERS[target] > LAYERS[own]):
                where = path.relative_to(ROOT)
                wrong.append(f"{where}:{line}: {own} (layer {LAYERS[own]}) imports {module}")
    assert wrong == []


def test_models_import_nothing_of_the_other_layers() -> None:
    for path in sources():
        if top(path) != "models":
            continue
        for line, module, _ in imports(path):
            target = module.split(".")[0]
            assert target not in LAYERS or target == "models", f"{path}:{line} imports {module}"


def test_no_module_takes_a_private_name_from_another() -> None:
    """A leading underscore means "this module only": other modules, tests included, use what
    a module offers in public."""
    taken: list[str] = []
    for path in sources():
        for line, module, names in imports(path):
            if module.split(".")[0] not in LAYERS.keys() | OUTSIDE:
                continue  # the standard library's and other packages' business
            private = [name for name in names if name.startswith("_") and name != "__version__"]
            if private:
                taken.append(f"{path.relative_to(ROOT)}:{line}: {module} {private}")
    assert taken == []
