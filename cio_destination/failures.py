"""How a failed run reaches a person: one readable line, and for command-line runs an exit code.

dlt wraps an error raised in a load job twice (`PipelineStepFailed` -> `LoadClientJobTerminalRetry`
or `LoadClientJobRetry` -> the error itself) and puts the job's whole traceback in the message of
both. It also logs every failed job twice with that traceback: once where the job fails
(`Terminal exception in job ...`), once when the loader collects it (`Job for ... failed
terminally ... with message ...`, or `... retried ...`). A load whose first table fails with a
wrong setting fails in every table at once, so a user saw the same sentence in a dozen tracebacks.

* `customerio_error(error)` finds this destination's error behind dlt's wrappers;
* `exit_status(error)` gives the exit code and the one line a command line prints (0 done,
  1 failed, run again to resume, 2 a setting or mapping to fix);
* `run_command(main)` runs a command with both, as the shipped pipelines do;
* dlt's log records of a job that failed with this destination's error keep their text but lose
  the traceback, which says nothing the message does not (the error names the key to fix).
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
from collections.abc import Callable, Iterator

from dlt.common.configuration.exceptions import (
    ConfigFieldMissingException,
    ConfigurationException,
    LookupTrace,
)
from dlt.extract.incremental.exceptions import (
    IncrementalCursorInvalidCoercion,
    IncrementalCursorPathMissing,
    IncrementalPrimaryKeyMissing,
)
from dlt.pipeline.exceptions import (
    CannotRestorePipelineException,
    InvalidPipelineName,
    PipelineStepFailed,
)

from cio_destination.exceptions import (
    CustomerioError,
    CustomerioTerminalError,
    CustomerioTransientError,
    PipelineLeaseError,
    StateFileError,
)

__all__ = ["customerio_error", "exit_status", "run_command"]

# a password in a URL: never printed, whatever message carries it
_URL_PASSWORD = re.compile(r"(\w+://[^:/@\s]*):[^@\s]*@")
# the last line Python writes for one of this destination's errors in a formatted traceback
_ERROR_LINE = re.compile(r"^cio_destination\.exceptions\.(\w+): (.*)$", re.MULTILINE)
_TRACEBACK = "Traceback (most recent call last):"


def _causes(error: BaseException) -> Iterator[BaseException]:
    """`error` and every exception behind it: dlt's wrapped exceptions, causes and contexts."""
    seen: set[int] = set()
    pending: list[object] = [error]
    while pending:
        current = pending.pop(0)
        if not isinstance(current, BaseException) or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending += [
            getattr(current, "exception", None),  # PipelineStepFailed
            getattr(current, "client_exception", None),  # LoadClientJobException
            getattr(current, "job_exception", None),  # LoadPackageAborted
            current.__cause__,
            current.__context__,
        ]


def customerio_error(error: BaseException) -> CustomerioError | None:
    """The Customer.io destination's error behind an exception `pipeline.run()` raised, or None.

    dlt raises `PipelineStepFailed` for anything that fails in a load job and wraps the job's
    own exception in it; this finds a `MappingError`, `CredentialsError`,
    `CustomerioTerminalError` or `CustomerioTransientError` there, whose message names what to do:

        try:
            pipeline.run(data)
        except PipelineStepFailed as failed:
            error = customerio_error(failed)
            if error is None:
                raise
            sys.exit(f"{type(error).__name__}: {error}")
    """
    return next((e for e in _causes(error) if isinstance(e, CustomerioError)), None)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _missing_keys(error: ConfigFieldMissingException) -> str:
    """Which keys dlt could not find, and the environment variable each could be set as."""
    found = []
    for field, traces in error.traces.items():
        lookups = [t for t in traces if isinstance(t, LookupTrace)]
        if not lookups:
            found.append(f"{field} is not set")
            continue
        # dlt tries the pipeline-scoped names first: the last of the longest is the usual one
        best = max(reversed(lookups), key=lambda t: len(t.sections))
        name = ".".join([*best.sections, field])
        variable = next(
            (
                t.key
                for t in reversed(lookups)
                if t.provider == "Environment Variables" and t.sections == best.sections
            ),
            None,
        )
        where = "put it in .dlt/secrets.toml or .dlt/config.toml"
        found.append(f"{name} is not set: {where}" + (f", or set {variable}" if variable else ""))
    return "; ".join(found)


def _is_warehouse_error(error: BaseException) -> bool:
    return any(c.__module__.startswith("sqlalchemy.") for c in type(error).__mro__)


def _source_setting(error: BaseException) -> str | None:
    """The line for a source setting to fix that dlt or SQLAlchemy reports while reading: an
    incremental cursor or primary key the rows do not have, an initial value that cannot be
    compared with the cursor, a SQLAlchemy dialect that is not installed. Made from the
    error's fields, never its text: dlt's may quote a row."""
    if isinstance(error, IncrementalCursorPathMissing):
        return (
            f"resource '{error.pipe_name}': its rows have no incremental cursor column"
            f" '{error.json_path}'; name a column of the table"
        )
    if isinstance(error, IncrementalPrimaryKeyMissing):
        return (
            f"resource '{error.pipe_name}': its rows have no primary key column"
            f" '{error.primary_key_column}'; name columns of the table"
        )
    if isinstance(error, IncrementalCursorInvalidCoercion):
        return (
            f"resource '{error.pipe_name}': its incremental {error.cursor_value_type} (a"
            f" {type(error.cursor_value).__name__}) cannot be compared with the values of its"
            f" cursor column '{error.cursor_path}'; give a value of the column's type"
        )
    if any(c.__name__ == "NoSuchModuleError" for c in type(error).__mro__) and _is_warehouse_error(
        error
    ):
        return f"SQLAlchemy {_first_line(error)}: install the package of that dialect"
    return None


def _status(error: BaseException) -> tuple[int, str] | None:
    causes = list(_causes(error))
    step = error.step if isinstance(error, PipelineStepFailed) else None
    for cause in causes:
        if isinstance(cause, PipelineLeaseError):  # another run is alive: run again later
            return 1, f"failed: {_first_line(cause)}"
        if isinstance(cause, CustomerioTerminalError):
            line = _first_line(cause)
            if step == "load":
                line = f"{line.rstrip('.')}; the load package is kept: run again once fixed"
            label = "configuration error"
            if isinstance(cause, StateFileError):
                label = "state error" if cause.shared else "state file error"
            return 2, f"{label}: {line}"
        if isinstance(cause, ConfigFieldMissingException):
            return 2, f"configuration error: {_missing_keys(cause)}"
        setting = _source_setting(cause)
        if setting is not None:
            return 2, f"configuration error: {setting}"
        if isinstance(
            cause, (ConfigurationException, CannotRestorePipelineException, InvalidPipelineName)
        ):
            return 2, f"configuration error: {_first_line(cause)}"
    for cause in causes:
        if isinstance(cause, CustomerioTransientError):
            return 1, f"failed: {_first_line(cause)}"
        if _is_warehouse_error(cause):
            return 1, f"warehouse error: {_first_line(cause)}; run again once it answers"
    if isinstance(error, PipelineStepFailed):
        inner = error.exception
        line = f"failed at dlt's {step} step: {type(inner).__name__}: {_first_line(inner)}"
        if step == "load":
            line = f"{line.rstrip('.')}; the load package is kept: run again to resume"
        return 1, line
    return None


def exit_status(error: BaseException) -> tuple[int, str] | None:
    """The exit code and one line for a command-line run that raised `error`.

    2: a setting or mapping to fix (dlt config, `MappingError` and the mirror guard,
    `CredentialsError`, a `StateFileError`, any `CustomerioTerminalError`, an unknown pipeline,
    an incremental cursor or primary key a source's rows do not have or an initial value of
    another type, a SQLAlchemy dialect that is not installed); the line names the key or the
    file. 1: a failure a rerun resumes (Customer.io kept failing, the warehouse could not be read,
    any other failed dlt step). None: an unexpected error, to be raised with its traceback. The
    line never holds a password, even one inside a URL.
    """
    status = _status(error)
    if status is None:
        return None
    code, line = status
    return code, _URL_PASSWORD.sub(r"\1:***@", line)


def run_command(main: Callable[[], int]) -> int:
    """Run a command's body and return its exit code: `main()`'s, or `exit_status`'s, with the
    line printed to stderr. While it runs, dlt's log records of jobs that failed with this
    destination's error are left out: the one line says it all."""
    with _quiet_job_logs():
        try:
            return main()
        except Exception as error:
            status = exit_status(error)
            if status is None:
                raise
            code, line = status
            print(line, file=sys.stderr)
            return code


# -- dlt's log records of failed jobs ----------------------------------------------------------

_quiet = 0
_quiet_lock = threading.Lock()


@contextlib.contextmanager
def _quiet_job_logs() -> Iterator[None]:
    global _quiet
    with _quiet_lock:
        _quiet += 1
    try:
        yield
    finally:
        with _quiet_lock:
            _quiet -= 1


def _described(record: logging.LogRecord) -> tuple[str, str] | None:
    """(the record's text before the traceback, "ErrorClass: message") when the record is
    about a job that failed with this destination's error, else None."""
    if record.exc_info and isinstance(record.exc_info[1], CustomerioError):
        error = record.exc_info[1]
        return f"{record.getMessage()}:", f"{type(error).__name__}: {_first_line(error)}"
    text = record.getMessage()
    start = text.find(_TRACEBACK)
    if start < 0:
        return None
    lines = _ERROR_LINE.findall(text, start)
    if not lines:
        return None
    name, message = lines[-1]  # the last exception of a chain is the one raised
    return text[:start].rstrip(), f"{name}: {message}"


class _JobErrorRecords(logging.Filter):
    """Keeps dlt's records of jobs failed with this destination's error to one line each."""

    def filter(self, record: logging.LogRecord) -> bool:
        described = _described(record)
        if described is None:
            return True
        if _quiet:
            return False
        head, error = described
        record.msg, record.args = f"{head} {error}", ()
        record.exc_info = record.exc_text = None
        return True


_filter = _JobErrorRecords()


def shorten_job_error_logs() -> None:
    """Put the filter on dlt's logger (once; dlt may replace its logger between runs)."""
    from dlt.common import logger

    target = logger.LOGGER
    if target is not None and _filter not in target.filters:
        target.addFilter(_filter)
