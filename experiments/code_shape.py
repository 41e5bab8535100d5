"""The package's shape: per module its lines, longest function and function-local imports, and
the import cycles between modules (local imports included, since they only hide a cycle).
A function-local import must say why it is local (start-up time, an optional package): a comment
on its line, within the 3 lines above it, or as the first line of its function's body.

    python experiments/code_shape.py [geoguess] [--markdown]

tests/test_code_shape.py holds the package to the limits this prints against.
"""

from __future__ import annotations

import argparse
import ast
import io
import sys
import tokenize
from pathlib import Path

MAX_LINES = 400


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(node: ast.ImportFrom, current: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = current.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(tree: ast.AST, current: str, is_package: bool, known: set[str]) -> dict[str, bool]:
    """The package's modules `current` imports, each with whether only function-locally."""
    found: dict[str, bool] = {}

    def add(name: str, local: bool) -> None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != current:
            found[name] = found.get(name, True) and local

    def visit(node: ast.AST, local: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = local or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            if isinstance(child, ast.Import):
                for alias in child.names:
                    add(alias.name, local)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(child, current, is_package)
                for alias in child.names:
                    full = f"{base}.{alias.name}"
                    add(full if full in known else base, local)
            elif isinstance(child, ast.If) and _is_type_checking(child.test):
                continue  # annotations only: no import at run time
            visit(child, inner)

    visit(tree, False)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return isinstance(test, ast.Name) and test.id == "TYPE_CHECKING"


def local_imports(tree: ast.AST) -> int:
    return len(_local_import_nodes(tree))


def _local_import_nodes(tree: ast.AST) -> list[tuple[ast.stmt, ast.AST]]:
    """Each import statement inside a function, once, with its innermost function."""
    found: list[tuple[ast.stmt, ast.AST]] = []

    def visit(node: ast.AST, function: ast.AST | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                visit(child, child)
                continue
            if function is not None and isinstance(child, ast.Import | ast.ImportFrom):
                found.append((child, function))
            visit(child, function)

    visit(tree, None)
    return found


def uncommented_local_imports(tree: ast.AST, text: str) -> list[int]:
    """Lines of the function-local imports that no comment explains: none on the statement's
    lines, none within the 3 lines above it, none opening its function's body."""
    commented = _comment_lines(text)
    lines = text.splitlines()
    missing = []
    for node, function in _local_import_nodes(tree):
        near = range(max(1, node.lineno - 3), node.end_lineno + 1)
        if commented.isdisjoint(near) and not _opens_with_comment(function, lines, commented):
            missing.append(node.lineno)
    return sorted(missing)


def _comment_lines(text: str) -> set[int]:
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return {tok.start[0] for tok in tokens if tok.type == tokenize.COMMENT}


def _opens_with_comment(function, lines: list[str], commented: set[int]) -> bool:
    """Whether the first non-blank line of the body, after any docstring, is a comment."""
    body = function.body
    first = body[0]
    has_docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    start = first.end_lineno + 1 if has_docstring else function.lineno + 1
    for number in range(start, len(lines) + 1):
        stripped = lines[number - 1].strip()
        if stripped:
            return stripped.startswith("#") and number in commented
    return False


def longest_function(tree: ast.AST) -> tuple[str, int]:
    best = ("", 0)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            length = node.end_lineno - node.lineno + 1
            if length > best[1]:
                best = (node.name, length)
    return best


def survey(root: Path) -> tuple[list[dict], list[list[str]]]:
    """Per module its figures, and the import cycles (each as a list of modules)."""
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    names = {module_name(p, root): p for p in files}
    known = set(names)
    rows, graph = [], {}
    for name, path in names.items():
        text = path.read_text()
        tree = ast.parse(text)
        graph[name] = imports_of(tree, name, path.name == "__init__.py", known)
        function, length = longest_function(tree)
        rows.append(
            {
                "module": name,
                "lines": len(text.splitlines()),
                "longest_function": function,
                "longest_lines": length,
                "local_imports": local_imports(tree),
                "uncommented_imports": uncommented_local_imports(tree, text),
            }
        )
    return rows, cycles(graph)


def cycles(graph: dict[str, dict[str, bool]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), ignoring imports of a
    package's own `__init__` by its submodules (Python runs the package first anyway)."""
    edges = {
        a: [b for b in targets if not (a.startswith(b + ".") and b in graph)]
        for a, targets in graph.items()
    }
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def connect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, []):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(10_000)
    for v in edges:
        if v not in index:
            connect(v)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", default="geoguess")
    parser.add_argument("--all", action="store_true", help="every module, not only the largest")
    args = parser.parse_args()
    rows, found = survey(Path(args.root).resolve())
    rows.sort(key=lambda r: -r["lines"])
    print("| module | lines | longest function (lines) | local imports |")
    print("| --- | --: | --- | --: |")
    for row in rows if args.all else [r for r in rows if r["lines"] > 250]:
        print(
            f"| {row['module']} | {row['lines']} | {row['longest_function']} "
            f"({row['longest_lines']}) | {row['local_imports']} |"
        )
    print()
    print(
        f"modules: {len(rows)}; over {MAX_LINES} lines: "
        f"{sum(r['lines'] > MAX_LINES for r in rows)}; "
        f"function-local imports: {sum(r['local_imports'] for r in rows)}"
    )
    uncommented = [(r["module"], line) for r in rows for line in r["uncommented_imports"]]
    print(f"function-local imports without a comment saying why: {len(uncommented)}")
    for module, line in sorted(uncommented):
        print(f"  {module} line {line}")
    print(f"import cycles: {len(found)}")
    for group in found:
        print("  " + " <-> ".join(group))


if __name__ == "__main__":
    main()
