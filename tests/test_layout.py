"""The package's layout rules, read from its source with ast: the core never imports the course (nor
at run time, in a fresh process, where no module but the PyTorch twin loads torch either), no module
imports another module's private name, and no two
modules import each other, directly or around a loop. Imports inside functions count: a lazy
import is still an import. A module's `if __name__ == "__main__":` block does not: it runs only when
the module is the program (`python -m ...`), never when it is imported. The last test feeds the
checks made-up modules that break each rule."""

import ast
import subprocess
import sys
import textwrap
from typing import Dict, List, Set, Tuple

from helpers import REPO

COURSE = "jaxgpt.course"
ENTRY_POINT = "__main__"  # `python -m jaxgpt.viz`: an entry point, which imports the course (registering the bigram)
TORCH_TWIN = "jaxgpt.bench.torch_twin"  # the one module that imports torch (bench's runs import it lazily)

# {dotted name: (parsed source, is a package's __init__)}
Modules = Dict[str, Tuple[ast.Module, bool]]


def package_modules() -> Modules:
    modules = {}
    for path in sorted((REPO / "jaxgpt").rglob("*.py")):
        if path.parent.name == "configs":  # the built-in config files: data, never imported
            continue
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        name = ".".join(parts[:-1] if is_package else parts)
        modules[name] = (ast.parse(path.read_text(encoding="utf-8"), str(path)), is_package)
    return modules


def _absolute(name: str, is_package: bool, node: ast.ImportFrom) -> str:
    """The module a `from ... import` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    package = name.split(".") if is_package else name.split(".")[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`"""
    test = getattr(node, "test", None)
    return (isinstance(node, ast.If) and isinstance(test, ast.Compare) and isinstance(test.left, ast.Name)
            and test.left.id == "__name__" and len(test.comparators) == 1
            and isinstance(test.comparators[0], ast.Constant) and test.comparators[0].value == "__main__")


def module_nodes(tree: ast.Module) -> List[ast.AST]:
    """Every node of the module, less its `if __name__ == "__main__":` blocks."""
    skipped = {id(sub) for node in tree.body if is_main_block(node) for sub in ast.walk(node)}
    return [node for node in ast.walk(tree) if id(node) not in skipped]


def imports_of(name: str, modules: Modules) -> List[Tuple[str, ast.AST]]:
    """(imported module, the import node) for every import of the package's own modules in `name`."""
    tree, is_package = modules[name]
    found = []
    for node in module_nodes(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, node) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, is_package, node)
            for alias in node.names:
                target = f"{source}.{alias.name}"  # `from pkg import module` imports the module
                if target in modules:
                    found.append((target, node))
                elif source in modules:
                    found.append((source, node))
    return found


def import_graph(modules: Modules) -> Dict[str, Set[str]]:
    return {name: {target for target, _ in imports_of(name, modules)} - {name} for name in modules}


def is_private(attr: str) -> bool:
    return attr.startswith("_") and not (attr.startswith("__") and attr.endswith("__"))


def private_imports(modules: Modules) -> List[str]:
    """`module: name` for each private name a module takes from another: `from m import _x`, or
    `alias._x` where alias is another module of the package."""
    found = []
    for name, (tree, is_package) in modules.items():
        module_aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                source = _absolute(name, is_package, node)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        module_aliases[alias.asname or alias.name] = f"{source}.{alias.name}"
                    elif source in modules and source != name and is_private(alias.name):
                        found.append(f"{name}: from {source} import {alias.name}")
            elif isinstance(node, ast.Import):
                module_aliases.update({alias.asname: alias.name for alias in node.names
                                       if alias.asname and alias.name in modules})
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and is_private(node.attr)
                    and module_aliases[node.value.id] != name):
                found.append(f"{name}: {module_aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def import_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    cycles = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def in_course(name: str, course: str = COURSE) -> bool:
    return name == course or name.startswith(course + ".")


def is_core(name: str, course: str = COURSE) -> bool:
    return not (in_course(name, course) or name.rsplit(".", 1)[-1] == ENTRY_POINT)


def course_imports_in_core(modules: Modules, course: str = COURSE) -> List[str]:
    return sorted(f"{name} imports {target}" for name, targets in import_graph(modules).items()
                  if is_core(name, course) for target in targets if in_course(target, course))


def test_the_core_never_imports_the_course():
    found = course_imports_in_core(package_modules())
    assert not found, "\n".join(found)


def test_no_module_imports_another_modules_private_name():
    found = private_imports(package_modules())
    assert not found, "\n".join(found)


def test_no_import_cycle():
    cycles = import_cycles(import_graph(package_modules()))
    assert not cycles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in cycles)


def test_the_core_loads_without_the_course_and_names_the_import_that_registers_it():
    """Every core module imported in a fresh process: the course and torch stay out of sys.modules,
    and asking for the bigram family says which import registers it; importing the course does."""
    core = sorted(name for name in package_modules() if is_core(name) and name != TORCH_TWIN)
    script = textwrap.dedent(f"""
        import importlib, sys
        for name in {core!r}:
            importlib.import_module(name)
        print("course loaded:", sorted(m for m in sys.modules if m.startswith({COURSE!r})))
        print("torch loaded:", "torch" in sys.modules)
        from jaxgpt.model.families import UnknownModelFamily, family_for
        try:
            family_for("bigram")
        except UnknownModelFamily as exc:
            print("error:", exc)
        import jaxgpt.course.bigram
        print("registered:", family_for("bigram") is jaxgpt.course.bigram.BIGRAM_FAMILY)
    """)
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == ["course loaded: []", "torch loaded: False",
                                       "error: model family 'bigram' is not registered: import jaxgpt.course.bigram",
                                       "registered: True"]


def test_the_checks_catch_what_they_look_for():
    sources = {
        "pkg": ("", True),
        "pkg.course": ("", True),
        "pkg.course.toy": ("from pkg.a import helper", False),
        "pkg.a": ("import pkg.b as b\n\ndef f():\n    from pkg.course import toy\n    return b._hidden", False),
        "pkg.b": ("from .c import _secret", False),
        "pkg.c": ("from pkg import a", False),
        "pkg.__main__": ("import pkg.course.toy", False),
        "pkg.tool": ("import pkg.d\n\nif __name__ == '__main__':\n    import pkg.d_cli", False),
        "pkg.d_cli": ("import pkg.tool", False),  # the tool's __main__ block imports it: not a cycle
        "pkg.d": ("import pkg.tool", False),  # a real cycle: tool <-> d
    }
    modules = {name: (ast.parse(src), is_package) for name, (src, is_package) in sources.items()}
    graph = import_graph(modules)
    assert graph["pkg.a"] == {"pkg.b", "pkg.course.toy"} and graph["pkg.b"] == {"pkg.c"}
    assert private_imports(modules) == ["pkg.a: pkg.b._hidden", "pkg.b: from pkg.c import _secret"]
    assert graph["pkg.tool"] == {"pkg.d"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.c", "pkg.course.toy"],  # a -> b -> c -> a, a <-> toy
                                    ["pkg.d", "pkg.tool"]]
    assert import_cycles({"x": {"y"}, "y": set()}) == []
    assert course_imports_in_core(modules, "pkg.course") == ["pkg.a imports pkg.course.toy"]  # __main__: an entry point
