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


def python_block(title: str, containing: str) -> str:
    """The Python block of a README section that contains `containing`."""
    for block in re.findall(r"```python\n(.*?)```", section(title), re.DOTALL):
        if containing in block:
            return block
    raise AssertionError(f"no Python block with {containing!r} under {title!r}")


def assert_defines_every_name_it_uses(code: str) -> None:
    """Every name the code reads is a builtin, imported or assigned (or defined) before."""
    tree = ast.parse(code)
    defined = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            defined |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            defined.add(node.id)
        elif isinstance(node, ast.FunctionDef):
            defined.add(node.name)
    used = [node for node in ast.walk(tree) if isinstance(node, ast.Name)]
    undefined = sorted({node.id for node in used if node.id not in defined})

    assert undefined == []
    stores = {n.id: n.lineno for n in used if isinstance(n.ctx, ast.Store)}
    loads = {n.id: n.lineno for n in reversed(used) if isinstance(n.ctx, ast.Load)}
    assert all(stores[name] < loads[name] for name in stores if name in loads)


def test_the_use_it_example_defines_every_name_it_uses():
    """It read from `WAREHOUSE_URL` without saying what that is."""
    assert_defines_every_name_it_uses(section_code("Use it"))


def test_the_airflow_example_is_a_whole_dag_file():
    """It used `dlt` and `warehouse` without importing them, and built no DAG."""
    code = python_block("## Several syncs, one workspace", "PipelineTasksGroup")
    assert_defines_every_name_it_uses(code)
    tree = ast.parse(code)
    dags = [
        node
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d).startswith("dag(") for d in node.decorator_list)
    ]
    assert len(dags) == 1, "one @dag function"
    called = [
        node.value.func.id
        for node in tree.body
        if isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Call)
        and isinstance(node.value.func, ast.Name)
    ]
    assert dags[0].name in called, "the DAG function is called, so Airflow finds the DAG"
    imported = {
        alias.name: node.module
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    pipelines = README.parent / "pipelines"
    module = pipelines / f"{imported['warehouse']}.py"
    assert "def warehouse(" in module.read_text(encoding="utf-8")


def section(title: str) -> str:
    """A README section's text, up to the next heading of its level or above."""
    text = README.read_text(encoding="utf-8")
    level = title.split(" ", 1)[0]
    start = text.index(f"\n{title}\n") + len(title) + 2
    ends = [m.start() for m in re.finditer(rf"\n#{{1,{len(level)}}} ", text[start:])]
    return text[start : start + ends[0]] if ends else text[start:]


def action_table() -> dict[str, list[str]]:
    """The README's action table (section "Mapping keys"): each action's cell of keys."""
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in section("### Mapping keys").splitlines()
        if line.startswith("| `")
    ]
    return {row[0].strip("`"): row for row in rows if len(row) == 3}


def test_the_readme_action_table_lists_every_action_with_exactly_its_keys():
    """The table is the users' list of actions and keys: it must say what the registry does.
    A cell "as `event`" takes that action's keys; a quoted word that is no key must be a value
    a key takes (`id`, `ios`, ...)."""
    from typing import get_args

    from cio_destination.actions import ACTIONS
    from cio_destination.mapping_keys import TableMapping

    keys = set(TableMapping.model_fields) - {"action"}
    literals = {
        value
        for field in TableMapping.model_fields.values()
        for kind in (field.annotation, *get_args(field.annotation))
        for value in get_args(kind)
        if isinstance(value, str)
    }
    table = action_table()
    documented: dict[str, set[str]] = {}
    for action, (_, operation, cell) in table.items():
        assert operation, action
        quoted = re.findall(r"`([^`]+)`", cell)
        if cell.startswith("as `"):
            documented[action] = set(ACTIONS[quoted[0]].keys)
            continue
        assert set(quoted) <= keys | literals, (action, sorted(set(quoted) - keys - literals))
        documented[action] = set(quoted) & keys

    assert sorted(documented) == sorted(ACTIONS)
    assert {name: sorted(found) for name, found in documented.items()} == {
        name: sorted(action.keys) for name, action in ACTIONS.items()
    }
