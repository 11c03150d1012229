"""The import direction of docs/design.md: quantizers -> kernels -> schemes -> hardware -> api -> the experiment.

Read from the source (every ``import``, also inside functions, so a late import cannot hide a cycle):
each part imports only parts at or below its level, and the modules' top-level imports form no cycle.
"""
import ast
from pathlib import Path

import qresearch

PKG = Path(qresearch.__file__).resolve().parent
# Level of each part; a module may import its own level or lower ones only.
LEVELS = {"_compat": 0, "_autograph": 0, "_prebuild": 0, "errors": 0, "paths": 0, "registry": 0, "checks": 0, "plugins": 0,
          "spec_keys": 0, "quantizers": 1, "kernels": 2, "schemes": 3, "hardware": 4, "api": 5, "deploy_fold": 5}
TOP = 6  # data, models, training, results, report, logger, config, run, demo: the experiment's parts


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str) -> bool:
    path = PKG.parent / name.replace(".", "/")
    return path.with_suffix(".py").exists() or path.is_dir()


def _imports(path: Path, top_level_only: bool):
    """qresearch modules imported by ``path`` (with ``top_level_only``: outside functions and classes)."""
    tree = ast.parse(path.read_text())
    if top_level_only:  # also under if/try at module level
        nodes = [n for top in tree.body if not isinstance(top, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
                 for n in ast.walk(top)]
    else:
        nodes = list(ast.walk(tree))
    for node in nodes:
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("qresearch"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("qresearch"):
            for a in node.names:  # `from qresearch import hardware` imports the module qresearch.hardware
                full = f"{node.module}.{a.name}"
                yield full if _is_module(full) else node.module


def _part(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def _level(module: str) -> int:
    return LEVELS.get(_part(module), TOP)


def _modules():
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def test_every_import_points_down():
    wrong = []
    for name, path in _modules().items():
        if name == "qresearch":  # the public API re-exports every part
            continue
        for imported in _imports(path, top_level_only=False):
            if _level(imported) > _level(name):
                wrong.append(f"{name} -> {imported}")
    assert wrong == [], wrong


def test_schemes_never_import_hardware_and_target_data_never_imports_schemes():
    mods = _modules()
    for name, path in mods.items():
        imported = set(_imports(path, top_level_only=False))
        if name.startswith("qresearch.schemes") or name.startswith("qresearch.quantizers"):
            assert not any(i.startswith(("qresearch.hardware", "qresearch.api")) for i in imported), name
    for name in ("qresearch.hardware.target", "qresearch.hardware.registry", "qresearch.hardware.runtimes"):
        imported = set(_imports(mods[name], top_level_only=True))
        assert not any(i.startswith("qresearch.schemes") for i in imported), (name, imported)


def test_no_import_cycle_between_modules():
    mods = _modules()
    graph = {n: {i for i in _imports(p, top_level_only=True) if i in mods and i != n} for n, p in mods.items()}
    # a package's __init__ re-exports its modules: importing a module of the package is not a cycle back
    for n in graph:
        graph[n] = {i for i in graph[n] if not (n.startswith(i + ".") and i != "qresearch")}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph[n]):
            if state.get(m) == "open":
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(m):] + [m]))
            if m not in state:
                visit(m)
        stack.pop()
        state[n] = "done"

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_target_kinds_agree():
    from qresearch.hardware.target import LAYER_KINDS
    from qresearch.schemes.layers import TARGET_KINDS

    assert LAYER_KINDS == TARGET_KINDS


def test_bn_folding_choices_agree():
    from qresearch.hardware.target import BN_FOLDING as TARGET_BN_FOLDING
    from qresearch.schemes.spec import BN_DEPLOYS_AS, BN_FOLDING

    assert TARGET_BN_FOLDING == BN_FOLDING + ("any",) and set(BN_DEPLOYS_AS) == set(BN_FOLDING)
