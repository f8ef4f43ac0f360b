"""The earlier name of `sync_audit_to_warehouse.py`, kept so schedules that call it keep working.

    python pipelines/rejected_rows_to_warehouse.py [--pipeline-name NAME] [--destination-url URL]

It runs `sync_audit_to_warehouse.py` with the same arguments: the rejected rows, and now the
sync reports too, go into the dataset `customerio_audit`.
"""

from __future__ import annotations

import runpy
from pathlib import Path

if __name__ == "__main__":
    runpy.run_path(str(Path(__file__).with_name("sync_audit_to_warehouse.py")), run_name="__main__")
