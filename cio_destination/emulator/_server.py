"""HTTP layer of the emulator: routing, auth, body limits, fault injection, responses."""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import socket
import socketserver
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

import orjson

from . import _faults
from ._faults import FaultInjector, Faults
from ._state import State
from ._validate import (
    MAX_BATCH_BYTES,
    MAX_ENTRY_BYTES,
    V1_CONTROL_KEYS,
    Invalid,
    OpError,
    check_op,
    check_v1_event,
    check_v1_identifier,
    check_v1_identify,
    send_email_error,
    validate_op,
)

#: Bodies larger than this are refused (413) without being read; anything up to it is read in full
#: so the keep-alive connection stays usable after a 400 for an oversize body.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
#: Idle keep-alive connections are closed after this many seconds.
IDLE_TIMEOUT = 120.0

_REASONS = {
    200: "OK",
    207: "Multi-Status",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    413: "Payload Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_EMPTY = b"{}"
_UNAUTHORIZED = orjson.dumps({"meta": {"error": "Unauthorized request"}})
_NOT_FOUND = orjson.dumps({"meta": {"error": "Not found"}})
_TOO_MANY = orjson.dumps({"meta": {"error": "Too many requests"}})
_ERROR_BODIES = {
    500: orjson.dumps({"meta": {"error": "Internal server error"}}),
    503: orjson.dumps({"meta": {"error": "Service unavailable"}}),
}


class _Invalid:
    """Marker for a body that is not JSON."""


_NOT_JSON: Any = _Invalid()


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """One API request as the emulator saw it.

    ``time`` is ``time.monotonic()`` at arrival; ``status`` is 0 when the connection was closed
    without a response (a dropped request or a lost response); ``ops`` is the number of operations
    the request carried (batch entries, 1 for single-entity calls, 0 otherwise); ``fault`` names
    the injected fault (``""`` when none): ``rate_limit``, ``http429``, ``http500``, ``http503``,
    ``drop`` or ``lost_response``.
    """

    time: float
    method: str
    path: str
    status: int
    ops: int
    fault: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "time": self.time,
            "method": self.method,
            "path": self.path,
            "status": self.status,
            "ops": self.ops,
            "fault": self.fault,
        }


class Backend:
    """Everything a request handler needs: credentials, state, faults and the request log."""

    def __init__(
        self,
        site_id: str,
        api_key: str,
        app_api_key: str,
        region: str,
        faults: Faults | None,
        private_key: str | None = None,
    ) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self.app_api_key = app_api_key
        self.private_key = private_key
        self.region = region
        self.url = ""
        self.state = State()
        self.injector = FaultInjector(faults)
        self._basic = f"{site_id}:{api_key}".encode()
        self._bearer = app_api_key.encode()
        self._private = private_key.encode() if private_key else None
        self._records: list[RequestRecord] = []
        self._records_lock = threading.Lock()
        self.server_errors: list[str] = []
        self._batches_now = 0
        self.most_batches_in_flight = 0

    def record(self, record: RequestRecord) -> None:
        with self._records_lock:
            self._records.append(record)

    def records(self) -> list[RequestRecord]:
        with self._records_lock:
            return list(self._records)

    def record_count(self) -> int:
        with self._records_lock:
            return len(self._records)

    def reset(self) -> None:
        with self.state.lock:
            self.state.clear()
        with self._records_lock:
            self._records.clear()
            self.most_batches_in_flight = self._batches_now
        self.injector.clear_window()

    def batch_arrived(self) -> None:
        """A `/api/v2/batch` request is being served (its answer not yet written)."""
        with self._records_lock:
            self._batches_now += 1
            self.most_batches_in_flight = max(self.most_batches_in_flight, self._batches_now)

    def batch_answered(self) -> None:
        with self._records_lock:
            self._batches_now -= 1

    def basic_ok(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, credentials = header.strip().partition(" ")
        if scheme.lower() != "basic":
            return False
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (binascii.Error, ValueError):
            return False
        return hmac.compare_digest(decoded, self._basic)

    def bearer_ok(self, header: str | None) -> bool:
        return self._bearer_token(header, self._bearer)

    def private_ok(self, header: str | None) -> bool:
        """A private key, when the workspace has one, as ``Authorization: Bearer <key>``: taken
        by every route, Track and App alike."""
        return self._private is not None and self._bearer_token(header, self._private)

    def authorized(self, auth: str, header: str | None) -> bool:
        """Whether ``header`` opens a route whose own scheme is ``auth`` (basic or bearer)."""
        if self.private_ok(header):
            return True
        return self.basic_ok(header) if auth == "basic" else self.bearer_ok(header)

    @staticmethod
    def _bearer_token(header: str | None, expected: bytes) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        if scheme.lower() != "bearer":
            return False
        try:
            token_bytes = token.strip().encode()
        except UnicodeEncodeError:
            return False
        return hmac.compare_digest(token_bytes, expected)


# --- route handlers: (backend, path parameter, raw body, parsed body) -> (status, body) -------

Result = tuple[int, bytes]
RouteHandler = Callable[[Backend, str, bytes, Any], Result]


def _errors(*errors: dict[str, Any]) -> bytes:
    return orjson.dumps({"errors": list(errors)})


def _meta_error(message: str) -> bytes:
    return orjson.dumps({"meta": {"error": message}})


def _v1_error(message: str) -> bytes:
    # The OpenAPI description documents {"meta": {"errors": [...]}}; Customer.io's servers answer
    # {"meta": {"error": "..."}}.  Both keys are given so either parser finds the message.
    return orjson.dumps({"meta": {"error": message, "errors": [message]}})


def _region(backend: Backend, param: str, body: bytes, doc: Any) -> Result:
    return 200, orjson.dumps({"url": backend.url, "region": backend.region, "environment_id": 1})


def _body_problem(body: bytes, doc: Any, limit: int) -> Result | None:
    """The 400 for a body over `limit` bytes or not JSON, the checks before any operation."""
    if len(body) > limit:
        message = f"the request body is {len(body)} bytes; the limit is {limit} bytes"
        return 400, _errors(OpError("too_large", "body", message).to_dict())
    if doc is _NOT_JSON:
        return 400, _errors(
            OpError("invalid", "body", "the request body is not valid JSON").to_dict()
        )
    return None


def _batch(backend: Backend, param: str, body: bytes, doc: Any) -> Result:
    problem = _body_problem(body, doc, MAX_BATCH_BYTES)
    if problem is not None:
        return problem
    if not isinstance(doc, dict):
        return 400, _errors(
            OpError(
                "invalid", "batch", "the request body must be an object with a batch list"
            ).to_dict()
        )
    batch = doc.get("batch")
    if batch is None:
        return 400, _errors(OpError("required", "batch", "batch is required").to_dict())
    if not isinstance(batch, list):
        return 400, _errors(OpError("invalid", "batch", "batch must be a list").to_dict())
    oversize = []
    for index, op in enumerate(batch):
        op_size = len(orjson.dumps(op))
        if op_size > MAX_ENTRY_BYTES:
            oversize.append(
                OpError(
                    "too_large",
                    "batch",
                    f"batch entry {index} is {op_size} bytes; the limit is {MAX_ENTRY_BYTES} bytes",
                ).to_dict(index)
            )
    if oversize:
        return 400, _errors(*oversize)
    errors: list[dict[str, Any]] = []
    valid: list[dict[str, Any]] = []
    for index, op in enumerate(batch):
        error = validate_op(op)
        if error is None:
            valid.append(op)
        else:
            errors.append(error.to_dict(index))
    state = backend.state
    with state.lock:
        for op in valid:
            state.apply(op)
    if errors:
        return 207, _errors(*errors)
    return 200, _EMPTY


def _entity(backend: Backend, param: str, body: bytes, doc: Any) -> Result:
    problem = _body_problem(body, doc, MAX_ENTRY_BYTES)
    if problem is not None:
        return problem
    try:
        check_op(doc)
    except Invalid as exc:
        return 400, _errors(exc.error.to_dict())
    state = backend.state
    with state.lock:
        state.apply(doc)
    return 200, _EMPTY


def _v1_key(identifier: str) -> str:
    return "email" if "@" in identifier else "id"


def _v1_identify(backend: Backend, identifier: str, body: bytes, doc: Any) -> Result:
    if not body.strip():
        doc = {}
    if doc is _NOT_JSON:
        return 400, _v1_error("the request body is not valid JSON")
    try:
        check_v1_identifier(identifier)
        check_v1_identify(doc)
    except Invalid as exc:
        return 400, _v1_error(exc.error.message)
    attributes = {k: v for k, v in doc.items() if k not in V1_CONTROL_KEYS}
    update_only = doc.get("_update") is True
    state = backend.state
    with state.lock:
        state.identify(
            _v1_key(identifier),
            identifier,
            attributes,
            doc.get("_timestamp"),
            create=not update_only,
        )
    return 200, _EMPTY


def _v1_delete(backend: Backend, identifier: str, body: bytes, doc: Any) -> Result:
    try:
        check_v1_identifier(identifier)
    except Invalid as exc:
        return 400, _v1_error(exc.error.message)
    state = backend.state
    with state.lock:
        state.delete_person(_v1_key(identifier), identifier)
    return 200, _EMPTY


def _v1_event(backend: Backend, identifier: str, body: bytes, doc: Any) -> Result:
    if doc is _NOT_JSON:
        return 400, _v1_error("the request body is not valid JSON")
    try:
        check_v1_identifier(identifier)
        check_v1_event(doc)
    except Invalid as exc:
        return 400, _v1_error(exc.error.message)
    state = backend.state
    with state.lock:
        state.event(
            doc.get("type") or "event",
            _v1_key(identifier),
            identifier,
            doc["name"],
            doc.get("id"),
            doc.get("timestamp"),
            doc.get("data") or {},
        )
    return 200, _EMPTY


def _send_email(backend: Backend, param: str, body: bytes, doc: Any) -> Result:
    if doc is _NOT_JSON:
        return 400, _meta_error("the request body is not valid JSON")
    message = send_email_error(doc)
    if message is not None:
        return 400, _meta_error(message)
    queued_at = int(time.time())
    state = backend.state
    with state.lock:
        delivery_id = state.add_delivery(doc, queued_at)
    return 200, orjson.dumps({"delivery_id": delivery_id, "queued_at": queued_at})


@dataclass(frozen=True, slots=True)
class _Route:
    handler: RouteHandler
    auth: str  # "basic" (Track) or "bearer" (App)
    single_op: bool


_EXACT_ROUTES: dict[tuple[str, str], _Route] = {
    ("GET", "/api/v1/accounts/region"): _Route(_region, "basic", False),
    ("POST", "/api/v2/batch"): _Route(_batch, "basic", False),
    ("POST", "/api/v2/entity"): _Route(_entity, "basic", True),
    ("POST", "/v1/send/email"): _Route(_send_email, "bearer", True),
}
_V1_IDENTIFY = _Route(_v1_identify, "basic", True)
_V1_DELETE = _Route(_v1_delete, "basic", True)
_V1_EVENT = _Route(_v1_event, "basic", True)
_CUSTOMERS = "/api/v1/customers/"


def _match(method: str, path: str) -> tuple[_Route | None, str]:
    route = _EXACT_ROUTES.get((method, path))
    if route is not None:
        return route, ""
    if path.startswith(_CUSTOMERS):
        rest = path[len(_CUSTOMERS) :]
        if method == "POST" and rest.endswith("/events") and rest.count("/") == 1:
            return _V1_EVENT, unquote(rest[: -len("/events")])
        if rest and "/" not in rest:
            if method == "PUT":
                return _V1_IDENTIFY, unquote(rest)
            if method == "DELETE":
                return _V1_DELETE, unquote(rest)
    return None, ""


def _parse(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        return _NOT_JSON


def _count_ops(route: _Route, doc: Any) -> int:
    if route.single_op:
        return 1
    if route.handler is _batch and isinstance(doc, dict):
        batch = doc.get("batch")
        if isinstance(batch, list):
            return len(batch)
    return 0


# --- the request handler ---------------------------------------------------------------------


class Handler(BaseHTTPRequestHandler):
    """One keep-alive connection.  Quiet: no request logs, no tracebacks for client hang-ups."""

    protocol_version = "HTTP/1.1"
    server_version = "cio-emulator"
    disable_nagle_algorithm = True
    timeout = IDLE_TIMEOUT
    server: Server
    _refused = 0

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's request and error logging."""

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    # --- plumbing -----------------------------------------------------------------------

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """Protocol errors (bad request line, unsupported method...) as JSON, then close."""
        self.close_connection = True
        try:
            phrase = HTTPStatus(code).phrase
        except ValueError:
            phrase = "Error"
        with contextlib.suppress(OSError):
            self._send(int(code), _meta_error(message or phrase))

    def _send(self, status: int, payload: bytes, extra: str = "") -> None:
        reason = _REASONS.get(status) or HTTPStatus(status).phrase
        head = (
            f"HTTP/1.1 {status} {reason}\r\n"
            f"Content-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n"
            f"{extra}"
        )
        if self.close_connection:
            head += "Connection: close\r\n"
        self.wfile.write(head.encode("latin-1") + b"\r\n" + payload)

    def _drop(self) -> None:
        """Close the connection without writing anything."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _refuse(self, status: int, message: str) -> None:
        self._refused = status
        self.close_connection = True
        self._send(status, _meta_error(message))

    def _read_body(self) -> bytes | None:
        """The request body, or ``None`` when the request was refused or the client went away."""
        transfer_encoding = self.headers.get("Transfer-Encoding")
        if transfer_encoding is not None:
            if transfer_encoding.strip().lower() != "chunked":
                self._refuse(400, "unsupported Transfer-Encoding")
                return None
            return self._read_chunked()
        content_length = self.headers.get("Content-Length")
        if content_length is None:
            return b""
        try:
            length = int(content_length)
        except ValueError:
            length = -1
        if length < 0:
            self._refuse(400, "invalid Content-Length")
            return None
        if length > MAX_REQUEST_BYTES:
            self._refuse(413, f"the request body is over {MAX_REQUEST_BYTES} bytes")
            return None
        if length == 0:
            return b""
        data = self.rfile.read(length)
        if len(data) < length:
            self.close_connection = True  # client went away mid-body
            return None
        return data

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        rfile = self.rfile
        while True:
            line = rfile.readline(1024)
            if not line.endswith(b"\n"):
                self.close_connection = True
                return None
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                self._refuse(400, "invalid chunked encoding")
                return None
            if size == 0:
                break
            total += size
            if total > MAX_REQUEST_BYTES:
                self._refuse(413, f"the request body is over {MAX_REQUEST_BYTES} bytes")
                return None
            data = rfile.read(size)
            if len(data) < size or rfile.readline(3) not in (b"\r\n", b"\n"):
                self.close_connection = True
                return None
            chunks.append(data)
        while True:  # trailers
            line = rfile.readline(65537)
            if not line:
                self.close_connection = True
                return None
            if line in (b"\r\n", b"\n"):
                break
        return b"".join(chunks)

    # --- dispatch -----------------------------------------------------------------------

    def _handle(self) -> None:
        arrived = time.monotonic()
        backend = self.server.backend
        path = self.path.split("?", 1)[0]
        self._refused = 0
        body = self._read_body()
        if body is None:
            if self._refused and not path.startswith("/_emulator/"):
                backend.record(RequestRecord(arrived, self.command, path, self._refused, 0))
            return
        if path.startswith("/_emulator/"):
            try:
                status, payload = _inspect(backend, self.command, path, body)
            except Exception:
                backend.server_errors.append(traceback.format_exc())
                status, payload = 500, _ERROR_BODIES[500]
            self._send(status, payload)
            return
        batch = path == "/api/v2/batch"
        if batch:
            backend.batch_arrived()
        try:
            self._serve(backend, arrived, path, body)
        finally:
            if batch:
                backend.batch_answered()

    def _serve(self, backend: Backend, arrived: float, path: str, body: bytes) -> None:
        ops = 0
        fault = ""
        try:
            status, payload, extra, ops, fault = self._api(backend, arrived, path, body)
        except Exception:
            backend.server_errors.append(traceback.format_exc())
            status, payload, extra = 500, _ERROR_BODIES[500], ""
            self.close_connection = True
        # Logged before answering, so a client that has its answer also sees the record.
        backend.record(RequestRecord(arrived, self.command, path, status, ops, fault))
        if status == 0:
            self._drop()
        else:
            self._send(status, payload, extra)

    def _api(
        self, backend: Backend, arrived: float, path: str, body: bytes
    ) -> tuple[int, bytes, str, int, str]:
        """Serve an API request: ``(status, body, extra headers, ops, fault)``.

        Status 0 means: close the connection without answering.
        """
        route, param = _match(self.command, path)
        if route is None:
            return 404, _NOT_FOUND, "", 0, ""
        doc = _parse(body) if body else _NOT_JSON
        ops = _count_ops(route, doc)
        outcome, delay, retry_after = backend.injector.decide(arrived)
        if delay > 0:
            time.sleep(delay)  # no lock held: delayed requests wait concurrently
        if outcome == _faults.DROP:
            return 0, b"", "", ops, outcome
        if outcome in (_faults.RATE_LIMITED, _faults.HTTP429):
            return 429, _TOO_MANY, f"Retry-After: {retry_after}\r\n", ops, outcome
        if outcome in (_faults.HTTP500, _faults.HTTP503):
            status = 500 if outcome == _faults.HTTP500 else 503
            return status, _ERROR_BODIES[status], "", ops, outcome
        header = self.headers.get("Authorization")
        if not backend.authorized(route.auth, header):
            status, payload = 401, _UNAUTHORIZED
        else:
            status, payload = route.handler(backend, param, body, doc)
        if outcome == _faults.LOST_RESPONSE:
            return 0, b"", "", ops, outcome  # applied, then the answer is lost
        return status, payload, "", ops, outcome


_COLLECTIONS = (
    "people",
    "events",
    "deliveries",
    "merges",
    "objects",
    "relationships",
    "suppressions",
)


def _inspect(backend: Backend, method: str, path: str, body: bytes) -> Result:
    """The ``/_emulator/*`` endpoints: no auth, never faulted, not logged."""
    name = path[len("/_emulator/") :].rstrip("/")
    state = backend.state
    if method == "GET":
        if name == "state":
            doc = orjson.loads(state.export_json(*_COLLECTIONS))
            doc["requests"] = backend.record_count()
            return 200, orjson.dumps(doc)
        if name in _COLLECTIONS:
            return 200, orjson.dumps(state.export(name))
        if name == "requests":
            return 200, orjson.dumps([r.to_dict() for r in backend.records()])
        if name == "faults":
            return 200, orjson.dumps(backend.injector.faults.to_dict())
    elif method == "POST":
        if name == "reset":
            backend.reset()
            return 200, _EMPTY
        if name == "faults":
            doc = _parse(body) if body.strip() else {}
            if not isinstance(doc, dict):
                return 400, _meta_error("the body must be a JSON object of fault settings")
            try:
                faults = Faults.from_dict(doc)
            except (TypeError, ValueError) as exc:
                return 400, _meta_error(str(exc))
            backend.injector.set(faults)
            return 200, orjson.dumps(faults.to_dict())
    return 404, _NOT_FOUND


class Server(ThreadingHTTPServer):
    """A threading HTTP/1.1 server that can close its live keep-alive connections on stop."""

    daemon_threads = True
    block_on_close = False
    request_queue_size = 256
    allow_reuse_address = True

    def __init__(self, host: str, port: int, backend: Backend) -> None:
        self.backend = backend
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in host:
            self.address_family = socket.AF_INET6
        super().__init__((host, port), Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind() does a reverse DNS lookup (getfqdn); skip it.
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Client hang-ups and timeouts are normal; anything else is kept for inspection."""
        if isinstance(sys.exc_info()[1], OSError):
            return
        self.backend.server_errors.append(traceback.format_exc())

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
