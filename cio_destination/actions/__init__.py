"""The registry of actions: every Customer.io operation a table's rows can become.

Each module of this package that declares a module-level `ACTIONS` tuple of `Action`s (see
`spec`) is a family of actions (person, events, devices, ...), found here when the package is
imported: adding an operation is adding one such module. The mapping validator
(`cio_destination.mapping`), the mapper (`cio_destination.mapper`) and the README's action table
(tests/test_readme.py) read every action from `ACTIONS`.
"""

from __future__ import annotations

import importlib
import pkgutil

from cio_destination.actions.spec import Action


def _discovered() -> dict[str, Action]:
    found: dict[str, Action] = {}
    for module in pkgutil.iter_modules(__path__):
        declared = importlib.import_module(f"{__name__}.{module.name}")
        for action in getattr(declared, "ACTIONS", ()):
            if action.name in found:
                raise ValueError(f"action {action.name!r} is declared twice")
            named = {key for requirement in action.requires for key in requirement.keys}
            if not named | set(action.row_key) <= action.keys:
                raise ValueError(f"action {action.name!r} needs keys it does not take")
            found[action.name] = action
    return dict(sorted(found.items()))


ACTIONS: dict[str, Action] = _discovered()
"""Every action by name, in name order."""

__all__ = ["ACTIONS", "Action"]
