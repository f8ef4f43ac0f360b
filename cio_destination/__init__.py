"""cio_destination: deliver rows from any dlt pipeline into Customer.io.

import dlt
from cio_destination import customerio_adapter

customerio_adapter(users, action="identify", identifier="email", identifier_type="email")
dlt.pipeline("warehouse_to_cio", destination="customerio").run(users)

`destination="customerio"` resolves through the package's dlt plugin entry point; the factory
`cio_destination.customerio(...)` is the same destination, with keys given as arguments.
"""

from __future__ import annotations

from cio_destination.adapter import customerio_adapter
from cio_destination.destination import customerio
from cio_destination.dryrun import dry_run
from cio_destination.exceptions import (
    CredentialsError,
    CustomerioError,
    CustomerioTerminalError,
    CustomerioTransientError,
    LeaseLostError,
    MappingError,
    PipelineLeaseError,
    SendLedgerLostError,
    StateFileError,
)
from cio_destination.failures import customerio_error, exit_status, run_command
from cio_destination.non_finite import mark_non_finite
from cio_destination.rejects import rejected_rows
from cio_destination.report import SyncReport, TableReport, sync_report, sync_reports
from cio_destination.restore import restore_state, run_lease
from cio_destination.version import __version__

__all__ = [
    "CredentialsError",
    "CustomerioError",
    "CustomerioTerminalError",
    "CustomerioTransientError",
    "LeaseLostError",
    "MappingError",
    "PipelineLeaseError",
    "SendLedgerLostError",
    "StateFileError",
    "SyncReport",
    "TableReport",
    "__version__",
    "customerio",
    "customerio_adapter",
    "customerio_error",
    "dry_run",
    "exit_status",
    "mark_non_finite",
    "rejected_rows",
    "restore_state",
    "run_command",
    "run_lease",
    "sync_report",
    "sync_reports",
]
