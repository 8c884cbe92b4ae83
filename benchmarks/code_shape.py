"""The largest classes and longest functions of a source tree, in lines (AST spans).

    python3 benchmarks/code_shape.py hil
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path


def spans(root: Path) -> tuple[list[tuple[int, str]], list[tuple[int, str]]]:
    """(lines, file:name) of every class and every function under ``root``."""
    classes: list[tuple[int, str]] = []
    functions: list[tuple[int, str]] = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ClassDef):
                classes.append((int(node.end_lineno or 0) - node.lineno + 1, f"{path}:{node.name}"))
            elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((int(node.end_lineno or 0) - node.lineno + 1,
                                  f"{path}:{node.name}"))
    return classes, functions


def main() -> None:
    """Print the five largest of each, for the folder named on the command line."""
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "hil")
    classes, functions = spans(root)
    for title, items in (("largest classes", classes), ("longest functions", functions)):
        print(title)
        for size, name in sorted(items, reverse=True)[:5]:
            print(f"  {size:5d}  {name}")


if __name__ == "__main__":
    main()
