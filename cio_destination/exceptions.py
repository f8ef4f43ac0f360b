"""Errors raised by the Customer.io destination, grouped by what dlt (and you) must do next.

* CustomerioError
  * CustomerioTerminalError - the load stops; fix something, then run again. The package stays pending.
    * MappingError - a table's mapping is missing or wrong (names the table and the mapping key)
    * CredentialsError - Customer.io refused the credentials (names the config keys to fix)
    * StateFileError - the state cannot be used (names the file, or the key state_url)
      * SendLedgerLostError - earlier loads sent emails through another send ledger than this one
    * PipelineLeaseError - another run of the pipeline holds its lease in `state_url` (run again
      once it ended; exit code 1)
      * LeaseLostError - this run lost its lease mid-load (taken over, or no heartbeat within
        `lease_timeout`) and stopped sending
  * CustomerioTransientError - Customer.io was unreachable or kept throttling after every retry
    (or the database of `fingerprints_url` or `rate_limit_url` failed); dlt retries the job and a
    later run resumes the package.

A single bad row is never an exception: it becomes a rejection (see `rejected_rows`) and the load goes
on. No message here ever carries a secret, a payload or an attribute value, and each is one line.
Raised inside a load, these reach the caller wrapped in dlt's `PipelineStepFailed`:
`cio_destination.customerio_error` finds them there (see `cio_destination.failures`).
"""

from __future__ import annotations

import datetime
import os
from typing import TypeVar

from dlt.common.destination.exceptions import (
    DestinationException,
    DestinationTerminalException,
    DestinationTransientException,
)

__all__ = [
    "CredentialsError",
    "CustomerioError",
    "CustomerioTerminalError",
    "CustomerioTransientError",
    "LeaseLostError",
    "MappingError",
    "PipelineLeaseError",
]


_E = TypeVar("_E", bound="CustomerioError")


class CustomerioError(DestinationException):
    """Base of every error raised by the Customer.io destination."""

    def again(self: _E) -> _E:
        """A new error of the same kind and message, for raising once more (in another load job
        or thread): raising the same object again would pile each raise's traceback onto it."""
        twin = type(self).__new__(type(self), *self.args)
        twin.__dict__.update(self.__dict__)
        return twin


class CustomerioTerminalError(CustomerioError, DestinationTerminalException):
    """Retrying cannot help: a setting or a mapping must change first."""


class MappingError(CustomerioTerminalError):
    """A table's Customer.io mapping is missing or invalid. Raised before any request of the load."""

    def __init__(self, table: str, key: str, problem: str) -> None:
        self.table = table
        self.key = key
        self.problem = problem
        super().__init__(
            f"Customer.io mapping of table '{table}', key '{key}': {problem}. Fix it with "
            f"customerio_adapter(...) or under [destination.customerio.tables.{table}] in config."
        )


class CredentialsError(CustomerioTerminalError):
    """Customer.io answered 401/403: the workspace credentials (or the region) are wrong."""

    def __init__(self, api: str, status: int, keys: tuple[str, ...]) -> None:
        self.api = api
        self.status = status
        self.keys = keys
        names = " and ".join(f"destination.customerio.{k}" for k in keys)
        super().__init__(
            f"Customer.io {api} refused the credentials (HTTP {status}). Check {names}"
            " (and `region`: a US workspace cannot be reached on the EU host)."
        )


class StateFileError(CustomerioTerminalError):
    """The destination's state (send ledger, rejections, reports, fingerprints, snapshots)
    cannot be used: its file is not SQLite, truncated, corrupt or unwritable, or the send
    ledger is not the one earlier loads sent through. Names the file, or the key `state_url`
    (never its value) when the state lives there (`shared`)."""

    def __init__(self, path: str | os.PathLike[str], problem: str, *, shared: bool = False) -> None:
        self.path = os.fspath(path)
        self.shared = shared
        where = f"state in {self.path}" if shared else f"state file {self.path}"
        super().__init__(f"Customer.io destination {where}: {problem}")

    @classmethod
    def unusable(cls, path: str | os.PathLike[str], cause: BaseException) -> StateFileError:
        return cls(
            path,
            f"it cannot be used ({type(cause).__name__}: {cause}). Restore it from a backup, or"
            " move it aside to start a new one (a pipeline that sends emails then needs"
            " destination.customerio.accept_new_send_ledger = true for one run)",
        )


class SendLedgerLostError(StateFileError):
    """A load with `send_email` tables found a send ledger that is not the one earlier loads of
    the pipeline sent through (deleted, emptied, replaced or restored from an older copy)."""

    def __init__(self, path: str | os.PathLike[str], *, shared: bool = False) -> None:
        what, restore = (
            (
                "its tables were dropped, emptied or restored from an older copy, or"
                " the URL now names another database",
                "Restore those tables",
            )
            if shared
            else (
                "the file was deleted, emptied, replaced or restored from an older copy",
                "Restore the file",
            )
        )
        super().__init__(
            path,
            "its send ledger is not the one earlier loads of this pipeline sent emails through"
            f" ({what}), so those emails could go out again; no email was sent. {restore}, or"
            " set destination.customerio.accept_new_send_ledger = true for one run to go on"
            " with this ledger",
            shared=shared,
        )


class PipelineLeaseError(CustomerioTerminalError):
    """Another run of the pipeline is alive and holds its lease in `state_url`: this run stops
    before reading or sending anything. Names the pipeline and the holder."""

    def __init__(
        self, pipeline: str, host: str, pid: int, started: datetime.datetime, timeout: float
    ) -> None:
        super().__init__(
            f"pipeline '{pipeline}' is already running: a run on host {host} (process {pid}),"
            f" started {started:%Y-%m-%d %H:%M:%S} UTC, holds its lease in"
            " destination.customerio.state_url; this run stopped before reading or sending"
            " anything. Run again once it ended (a run that died is taken over after"
            f" lease_timeout, {timeout:g} s, without its heartbeat)"
        )


class LeaseLostError(PipelineLeaseError):
    """This run may no longer hold its pipeline's lease in `state_url`: another run took it
    over, or no heartbeat of this run reached the database within `lease_timeout`, after which
    another run may take it. The run stops sending; its load package stays pending."""

    def __init__(self, pipeline: str, timeout: float) -> None:
        CustomerioTerminalError.__init__(
            self,
            f"pipeline '{pipeline}' lost its lease in destination.customerio.state_url (taken"
            f" over by another run, or no heartbeat within lease_timeout, {timeout:g} s): this"
            " run stopped sending. The cursors of its last completed load are kept, so the run"
            " that holds the lease, or the next one, reads this load's rows again",
        )


class CustomerioTransientError(CustomerioError, DestinationTransientException):
    """Requests kept failing with throttling, server errors or network faults after all retries,
    or a database the load depends on (`fingerprints_url`, `rate_limit_url`) failed.

    dlt keeps the load package; the next run resumes it. Replays are safe: identifies are
    idempotent and events carry deterministic ids.
    """
