"""The README's examples stand on their own: a reader can copy them as they are."""

from __future__ import annotations

import ast
import builtins
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def section_code(title: str) -> str:
    """The first Python block of a README section."""
    text = README.read_text(encoding="utf-8")
    section = text[text.index(f"\n## {title}\n") :]
    found = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert found is not None
    return found.group(1)


def test_the_use_it_example_defines_every_name_it_uses():
    """It read from `WAREHOUSE_URL` without saying what that is."""
    tree = ast.parse(section_code("Use it"))
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
    used = [node for node in ast.walk(tree) if isinstance(node, ast.Name)]
    undefined = sorted({node.id for node in used if node.id not in defined})

    assert undefined == []
    stores = {n.id: n.lineno for n in used if isinstance(n.ctx, ast.Store)}
    loads = {n.id: n.lineno for n in reversed(used) if isinstance(n.ctx, ast.Load)}
    assert all(stores[name] < loads[name] for name in stores if name in loads)
