"""The dlt plugin's destinations: `destination="customerio"` resolves here.

The package registers itself as a dlt plugin (`[project.entry-points.dlt]` in pyproject.toml).
dlt 1.31 looks a short destination name up as `<plugin module>.destinations.<name>` in every
plugin, so after `pip install cio-destination`, `dlt.pipeline(destination="customerio")` finds
`cio_destination.destinations.customerio`: the same destination as `customerio()`, with the same
config section, `[destination.customerio]`.
"""

from __future__ import annotations

from cio_destination.destination import customerio

__all__ = ["customerio"]
