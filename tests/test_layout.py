"""The package's folders are its stages, layered strictly downward: a module imports only from
its own folder or from a lower layer, never upward, and MLflow is imported only in tracking/."""

import ast
import pathlib

import pytest

PKG = pathlib.Path(__file__).resolve().parent.parent / "harness"

# low to high; a part may import from its own folder and from parts of a lower layer
LAYERS = [
    {"errors", "plots", "__init__"},
    {"tracking", "models", "data"},
    {"recipes"},
    {"training"},
    {"runs", "bench", "report"},
    {"executors"},
    {"auto"},
    {"cli"},
]
RANK = {part: i for i, layer in enumerate(LAYERS) for part in layer}


def part_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) < 2 or not ((PKG / parts[1]).is_dir() or (PKG / f"{parts[1]}.py").exists()):
        return "__init__"  # the package itself, or a name it defines (__version__)
    return parts[1]


def harness_imports(path: pathlib.Path):
    rel = path.relative_to(PKG.parent).with_suffix("")
    module = ".".join(rel.parts)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    if path.name == "__init__.py":
        module = package
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target + "." + a.name for a in node.names] if not node.module else [target]
            else:
                names = [node.module or ""]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        for name in names:
            yield module, name


MODULES = sorted(p for p in PKG.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_imports_only_downward(path):
    for module, target in harness_imports(path):
        if not target.startswith("harness"):
            continue
        src, dst = part_of(module), part_of(target)
        if dst == "__init__" or src == dst:
            continue
        assert dst in RANK, f"{target}: a part of harness/ that no layer names"
        assert RANK[dst] < RANK[src], f"{module} imports {target}: upward or sideways ({src} -> {dst})"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PKG)))
def test_mlflow_only_in_tracking(path):
    for module, target in harness_imports(path):
        if target.split(".")[0] == "mlflow":
            assert part_of(module) == "tracking", f"{module} imports {target}"


def test_only_the_shared_leaves_are_flat():
    flat = {p.stem for p in PKG.glob("*.py")}
    assert flat == {"__init__", "errors", "plots"}
    for folder in (p for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").exists()):
        doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text())) or ""
        for module in folder.glob("*.py"):
            if module.name != "__init__.py":
                assert module.name in doc, f"{folder.name}/__init__.py does not name {module.name}"
