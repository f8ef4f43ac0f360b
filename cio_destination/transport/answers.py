"""Customer.io's answers: what each one means, and what of its text a rejection may keep.

Every answer (a response, or a transport error) is classified in one place, `classify`, into a
`Verdict`; the clients (`cio_destination.transport.api` and the Track and App clients) only act
on verdicts:

=====================================  ==========================================================
answer                                 verdict and what happens
=====================================  ==========================================================
2xx but 207                            DELIVERED: every entry of the request was accepted
207                                    PARTIAL: accepted except the entries its `batch_index`
                                       values name, which are rejected (a 207 that names none,
                                       or any of whose errors names no entry of the request:
                                       every entry is rejected as `unreadable_207`)
400, 413, 422                          NARROW: split in halves until the offending entries stand
                                       alone; those are rejected, the rest delivered
401, 403                               REFUSED: terminal, `CredentialsError` names the keys
3xx (never followed: credentials       MISDIRECTED: terminal, names `track_url`/`app_url` (or
must not travel to another host),      `region`, when the host came from it)
404, 405
other 4xx (402, 409, 410, 451, ...)    REJECTED: every entry of that request is rejected with
                                       reason `http_<status>`; not narrowed, as such answers
                                       come from proxies for a whole request
a connection refused (or a host that   UNREACHABLE: terminal at once, naming the URL and the
does not resolve) at the preflight     key that set it; retrying a closed port only hides it
a request httpx refuses to write       UNSENDABLE: terminal at once, naming the keys; nothing
(`LocalProtocolError`: a header value  left the machine, and it would be refused the same way
it cannot send; `UnsupportedProtocol`) every time
408, 429, 1xx, 5xx, any other status,  RETRY: exponential backoff with jitter, honouring
other network faults                   `Retry-After`, at most `max_attempts` per request; then
                                       `CustomerioTransientError` (the package stays pending)
=====================================  ==========================================================

A request that must not be repeated (a transactional send, `repeatable=False`) is retried only
when the answer proves Customer.io did not take it: a connect error, a connect or pool timeout,
or a 429. Every other RETRY answer (408, 1xx, 5xx, a timeout or a dropped connection after the
body left) is UNCERTAIN instead, since a gateway may answer after the origin took the request:
`OutcomeUnknown` is raised after that one attempt. A send carries one row, so NARROW and
REJECTED answers to it reject that row.

A rejection keeps Customer.io's `reason` and `field`; its free-text `message` passes through
`ServerText`, which masks every value of the rejected operation, so it never holds one.
"""

from __future__ import annotations

import enum
import json
import re
from decimal import Decimal, InvalidOperation
from typing import Any

import httpx
import orjson

from cio_destination.entries import DATA_KEYS

NARROWABLE_STATUS = frozenset({400, 413, 422})
_MAX_SERVER_MESSAGE = 300


class Verdict(enum.Enum):
    """What an answer from Customer.io means for the entries of its request (see the table)."""

    DELIVERED = "delivered"
    PARTIAL = "partial"
    NARROW = "narrow"
    REJECTED = "rejected"
    REFUSED = "refused"
    MISDIRECTED = "misdirected"
    UNREACHABLE = "unreachable"
    UNSENDABLE = "unsendable"
    RETRY = "retry"
    UNCERTAIN = "uncertain"


# Failures that prove the request never left this machine: safe to retry even for a send.
_NOT_SENT_ERRORS = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Requests httpx refuses to write at all (before any byte of them leaves): retrying cannot help.
_UNSENDABLE_ERRORS = (httpx.LocalProtocolError, httpx.UnsupportedProtocol)


def classify(
    answer: httpx.Response | httpx.RequestError, *, repeatable: bool = True, preflight: bool = False
) -> Verdict:
    """The one decision of what an answer (or a transport error) means; see the module table."""
    if isinstance(answer, httpx.RequestError):
        if isinstance(answer, _UNSENDABLE_ERRORS):
            return Verdict.UNSENDABLE
        if preflight and isinstance(answer, httpx.ConnectError):
            return Verdict.UNREACHABLE
        if repeatable or isinstance(answer, _NOT_SENT_ERRORS):
            return Verdict.RETRY
        return Verdict.UNCERTAIN
    status = answer.status_code
    if status == 207:
        return Verdict.PARTIAL
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if 300 <= status < 400 or status in (404, 405):
        return Verdict.MISDIRECTED
    if status in (401, 403):
        return Verdict.REFUSED
    if status == 429:
        return Verdict.RETRY  # a 429 proves the request was not taken
    if status in NARROWABLE_STATUS:
        return Verdict.NARROW
    if 400 <= status < 500 and status != 408:
        return Verdict.REJECTED
    # 408, 1xx, 5xx and anything outside the registered ranges: the server may be fine later,
    # but a gateway may answer so after the origin took the request
    return Verdict.RETRY if repeatable else Verdict.UNCERTAIN


def retry_after_of(response: httpx.Response) -> float | None:
    """Seconds a `Retry-After` header asks to wait, None when it gives no number."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


def server_errors(response: httpx.Response) -> list[dict[str, Any]]:
    """The `errors` items of a Track API answer (a 207's per entry, a 400's), if it has any."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return []
    errors = payload.get("errors") if isinstance(payload, dict) else None
    return [e for e in errors if isinstance(e, dict)] if isinstance(errors, list) else []


def partial_errors(response: httpx.Response, count: int) -> dict[int, dict[str, Any]] | None:
    """The errors of a 207 by the index of the entry each names (the first error of an entry
    wins), or None when the answer cannot be read whole: not JSON, no `errors` list, an item
    that is not an object, or one whose `batch_index` is not an integer naming one of the
    request's `count` entries (a string, a float, a bool, a negative or missing index). An
    error we cannot tie to an entry means we cannot tell which entries Customer.io took."""
    try:
        payload = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    errors = payload.get("errors") if isinstance(payload, dict) else None
    if not isinstance(errors, list):
        return None
    failed: dict[int, dict[str, Any]] = {}
    for error in errors:
        index = error.get("batch_index") if isinstance(error, dict) else None
        if type(index) is not int or not 0 <= index < count:
            return None
        failed.setdefault(index, error)
    return failed


_MASK = "<value>"
_EMAIL = re.compile(r"[^\s@'\"`<>()\[\],;:]+@[^\s@'\"`<>()\[\],;:]+")
_QUOTED = re.compile(r"'([^']*)'|\"([^\"]*)\"|`([^`]*)`")
# a number as any program may print it: 1500000, 1500000.0, 1.5e+06, -.5
_NUMBER = re.compile(r"(?<![0-9A-Za-z_.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![0-9A-Za-z_])")
_STRUCTURE = frozenset({"type", "action"})  # the mapping's, not the row's


class ServerText:
    """Customer.io's free text about one operation (a 207 item, a 400, a send's error), made safe
    to store: Customer.io may echo what it was sent, and a rejection never holds a row's value.

    Becomes `<value>`: every value of the operation (case-insensitively, as a whole token, also
    as JSON escapes it), every number equal to a number of the operation however it is written
    (`1.5e+06` for 1500000.0), every key inside the row's data below its first level (the row's
    JSON data may be keyed by anything), every e-mail address, and every quoted text that is
    not a name of the operation (an attribute, an identifier kind). The result is capped at 300
    characters. Codes and field paths such as `invalid` or `attributes.plan` pass unchanged.
    """

    def __init__(self, operation: bytes) -> None:
        values: set[str] = set()
        self._names: set[str] = set()
        self._numbers: set[Decimal] = set()
        self._floats: set[float] = set()
        self._readable = True
        try:
            self._walk(orjson.loads(operation), values, top=True)
        except orjson.JSONDecodeError:
            self._readable = False  # values unknown: no free text can be shown safely
        alternatives = sorted(values, key=len, reverse=True)
        self._values = (
            re.compile(
                "(?<![0-9A-Za-z])(?:" + "|".join(map(re.escape, alternatives)) + ")(?![0-9A-Za-z])",
                re.IGNORECASE,
            )
            if alternatives
            else None
        )

    def _walk(
        self, value: Any, values: set[str], *, top: bool = False, data: int | None = None
    ) -> None:
        """`data`: None in the operation's structure, else the depth inside a row's data (0:
        the object under a key of `DATA_KEYS`, whose keys are column names or the row's)."""
        if isinstance(value, dict):
            for key, item in value.items():
                if data is None or data == 0:
                    self._names.add(str(key))
                else:
                    self._value(str(key), values)
                if top and key in _STRUCTURE:
                    continue
                if data is None:
                    self._walk(item, values, data=0 if key in DATA_KEYS else None)
                else:
                    self._walk(item, values, data=data + 1)
        elif isinstance(value, list):
            for item in value:
                self._walk(item, values, data=data)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            self._number(value)  # however it is written: see `_numeral`
        elif isinstance(value, str):
            self._value(value, values)

    def _value(self, text: str, values: set[str]) -> None:
        if not text.strip():
            return
        values.add(text)
        # as a JSON answer may write it: with ASCII escapes, or with its quotes and
        # control characters escaped only
        values.add(json.dumps(text)[1:-1])
        values.add(orjson.dumps(text).decode()[1:-1])

    def _number(self, value: int | float) -> None:
        try:
            self._numbers.add(Decimal(repr(value)) if isinstance(value, float) else Decimal(value))
            self._floats.add(float(value))
        except (InvalidOperation, OverflowError, ValueError):
            pass

    def __call__(self, value: Any) -> str | None:
        if value is None or not self._readable:
            return None
        text = str(value)[: _MAX_SERVER_MESSAGE * 8]  # bounds the work on a huge answer
        if self._values is not None:
            text = self._values.sub(_MASK, text)
        if self._numbers:
            text = _NUMBER.sub(self._numeral, text)
        text = _EMAIL.sub(_MASK, text)
        text = _QUOTED.sub(self._quoted, text)
        return text[:_MAX_SERVER_MESSAGE]

    def _numeral(self, match: re.Match[str]) -> str:
        token = match.group(0)
        try:
            number = Decimal(token)
            if number in self._numbers or float(token) in self._floats:
                return _MASK
        except (InvalidOperation, OverflowError, ValueError):
            pass
        return token

    def _quoted(self, match: re.Match[str]) -> str:
        inner = next(g for g in match.groups() if g is not None)
        if inner == _MASK or inner in self._names:
            return match.group(0)
        quote = match.group(0)[0]
        return f"{quote}{_MASK}{quote}"
