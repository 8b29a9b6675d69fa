"""The package's shape: no import cycles between its modules, and no long module without a stated reason."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "qpairs"
MAX_LINES = 350


def module_name(path: Path, root: Path = PACKAGE) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, names: set[str], root: Path = PACKAGE) -> set[str]:
    """The package's modules that `path` imports anywhere (also inside functions)."""
    mod = module_name(path, root)
    package = mod if path.name == "__init__.py" else mod.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            targets = [prefix] + [f"{prefix}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        else:
            continue
        found |= {t for t in targets if t in names and t not in (mod, root.name)}
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    paths = list(root.rglob("*.py"))
    names = {module_name(p, root) for p in paths}
    return {module_name(p, root): imported_modules(p, names, root) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, …, a], or None."""
    state: dict[str, str] = {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt, stack + [nxt])
                if cycle:
                    return cycle
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node, [node])
            if cycle:
                return cycle
    return None


def test_a_cycle_through_a_function_level_import_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .b import f\n")
    (pkg / "b.py").write_text("import os\n\n\ndef f():\n    from . import c\n")
    (pkg / "c.py").write_text("def g():\n    from .a import f\n")
    assert find_cycle(import_graph(pkg)) == ["pkg.a", "pkg.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("import pkg\n")
    assert find_cycle(import_graph(pkg)) is None


def test_no_import_cycle_inside_the_package():
    graph = import_graph()
    assert "qpairs.data" in graph and graph["qpairs.search"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_long_modules_say_why():
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        doc = ast.get_docstring(ast.parse(text)) or ""
        if len(text.splitlines()) > MAX_LINES and f"Longer than {MAX_LINES} lines because" not in doc:
            long.append(f"{path.name} ({len(text.splitlines())} lines)")
    assert not long, f"modules over {MAX_LINES} lines without a reason in their docstring: {', '.join(long)}"


ENCODE_LOOP = "encoding.py"  # the one module that runs encoders on tokenized batches


def tokenizing_modules(root: Path = PACKAGE) -> list[str]:
    """Modules (file names) that call `.tokenize(...)` on something: each turns texts into encoder batches.
    `bm25s.tokenize` (the words of a BM25 index, `qpairs.bm25`) feeds no encoder."""
    found = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if any(isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "tokenize"
               and not (isinstance(n.func.value, ast.Name) and n.func.value.id == "bm25s") for n in ast.walk(tree)):
            found.append(path.name)
    return found


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph[todo.pop()] - seen:
            seen.add(nxt)
            todo.append(nxt)
    return seen


def test_a_second_encode_loop_is_found(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / ENCODE_LOOP).write_text("def run(enc, texts):\n    return enc(**enc.tokenize(texts))\n")
    (pkg / "other.py").write_text("def tokenize(t):\n    return t.split()\n\n\nx = tokenize('a b')\n")
    assert tokenizing_modules(pkg) == [ENCODE_LOOP]
    (pkg / "other.py").write_text("def f(model, texts):\n    return model.encoder.tokenize(texts)\n")
    assert tokenizing_modules(pkg) == [ENCODE_LOOP, "other.py"]
    (pkg / "other.py").write_text("import bm25s\n\n\ndef f(texts):\n    return bm25s.tokenize(texts)\n")
    assert tokenizing_modules(pkg) == [ENCODE_LOOP]


def test_texts_become_vectors_in_one_loop():
    assert tokenizing_modules() == [ENCODE_LOOP]


def test_the_model_and_detector_import_no_training_code():
    graph = import_graph()
    training = {"qpairs.title_body", "qpairs.train", "qpairs.data", "qpairs.objective"}
    assert not reachable(graph, "qpairs.model") & training
    assert not graph["qpairs.detector"] & training
