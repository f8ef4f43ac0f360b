"""The :class:`Emulator` facade: lifecycle and inspection of an emulated Customer.io workspace."""

from __future__ import annotations

import threading
from types import TracebackType
from typing import Any

from ._faults import Faults
from ._server import Backend, RequestRecord, Server


class Emulator:
    """A local Customer.io Track API (v1, v2) and App API send endpoint, with inspectable state.

    ``port=0`` binds a free port.  Track endpoints take HTTP Basic ``site_id:api_key``; the App
    API takes ``Authorization: Bearer <app_api_key>``; both are served at :attr:`url`.  With a
    ``private_key`` (Customer.io's ``sk_...`` keys), every endpoint also takes
    ``Authorization: Bearer <private_key>``.
    The collection properties return deep copies taken under the state lock.
    """

    def __init__(
        self,
        site_id: str = "site",
        api_key: str = "key",
        app_api_key: str = "app-key",
        host: str = "127.0.0.1",
        port: int = 0,
        faults: Faults | None = None,
        region: str = "us",
        private_key: str | None = None,
    ) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self.app_api_key = app_api_key
        self.private_key = private_key
        self.host = host
        self.region = region
        self._requested_port = port
        self._backend = Backend(site_id, api_key, app_api_key, region, faults, private_key)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._lifecycle = threading.Lock()

    # --- lifecycle ------------------------------------------------------------------------

    def start(self) -> Emulator:
        """Bind and serve on a daemon thread; returns ``self``.  A no-op when already running."""
        with self._lifecycle:
            if self._server is not None:
                return self
            server = Server(self.host, self._requested_port, self._backend)
            self._server = server
            host = self.host if ":" not in self.host else f"[{self.host}]"
            self._backend.url = f"http://{host}:{server.server_port}"
            self._thread = threading.Thread(
                target=server.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"cio-emulator-{server.server_port}",
                daemon=True,
            )
            self._thread.start()
            return self

    def stop(self) -> None:
        """Stop serving, close the listening socket and any open connections.  Idempotent."""
        with self._lifecycle:
            server, thread = self._server, self._thread
            self._server = self._thread = None
            if server is None:
                return
            server.shutdown()
            server.close_connections()
            server.server_close()
            if thread is not None:
                thread.join(timeout=5)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._server is not None

    @property
    def port(self) -> int:
        """The bound port (raises ``RuntimeError`` before :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._server.server_port

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:54321``, for both Track and App endpoints."""
        if self._server is None:
            raise RuntimeError("the emulator is not started")
        return self._backend.url

    # --- state ----------------------------------------------------------------------------

    @property
    def people(self) -> list[dict[str, Any]]:
        """People: ``{"identifiers", "attributes"}`` (+ ``"devices"`` when any).

        A suppressed person is not among them: Customer.io deletes the profile (see
        :attr:`suppressions`)."""
        return self._backend.state.export("people")

    def find_person(
        self,
        id: str | None = None,
        email: str | None = None,
        cio_id: str | None = None,
        phone: str | None = None,
    ) -> dict[str, Any] | None:
        """The person holding all the given identifiers (a copy), or ``None``."""
        return self._backend.state.find_person(id=id, email=email, cio_id=cio_id, phone=phone)

    @property
    def events(self) -> list[dict[str, Any]]:
        """Accepted events in arrival order: ``type, id, name, timestamp, attributes, identifiers``."""
        return self._backend.state.export("events")

    @property
    def deliveries(self) -> list[dict[str, Any]]:
        """Transactional sends: ``delivery_id, transactional_message_id, to, identifiers,
        message_data, send_at, queued_at, body``."""
        return self._backend.state.export("deliveries")

    @property
    def merges(self) -> list[dict[str, Any]]:
        """Applied merges: ``primary`` and ``secondary`` identifiers as they were at the time."""
        return self._backend.state.export("merges")

    @property
    def objects(self) -> list[dict[str, Any]]:
        """Objects: ``object_type_id, object_id, cio_object_id, attributes``."""
        return self._backend.state.export("objects")

    @property
    def relationships(self) -> list[dict[str, Any]]:
        """Person-object relationships: ``person`` (identifiers), ``object_type_id``,
        ``object_id``, ``attributes``."""
        return self._backend.state.export("relationships")

    @property
    def suppressions(self) -> list[dict[str, str]]:
        """Suppressed identifiers, one ``{"id", "email", ...}`` per suppress that named them:
        operations naming any of them are ignored until one of them is unsuppressed."""
        return self._backend.state.export("suppressions")

    @property
    def duplicate_events(self) -> int:
        """Events ignored because their ``id`` had been received before."""
        with self._backend.state.lock:
            return self._backend.state.duplicate_events

    @property
    def ignored_ops(self) -> int:
        """Valid operations that changed nothing: on suppressed identifiers, unknown ``cio_id`` or
        ``cio_object_id``, or merges whose people do not both exist."""
        with self._backend.state.lock:
            return self._backend.state.ignored_ops

    @property
    def stale_identifies(self) -> int:
        """Identify calls dropped because their ``timestamp`` was older than the profile's."""
        with self._backend.state.lock:
            return self._backend.state.stale_identifies

    @property
    def requests(self) -> list[RequestRecord]:
        """Every API request (not ``/_emulator/*``), faulted ones included, in completion order."""
        return self._backend.records()

    @property
    def most_batches_in_flight(self) -> int:
        """The most ``/api/v2/batch`` requests ever served at once (arrived, not yet answered)
        since the start or the last :meth:`reset`."""
        return self._backend.most_batches_in_flight

    @property
    def server_errors(self) -> list[str]:
        """Tracebacks of unexpected server-side exceptions (should stay empty)."""
        return list(self._backend.server_errors)

    def reset(self) -> None:
        """Forget all people, events, objects, deliveries, counters and the request log."""
        self._backend.reset()

    # --- faults ---------------------------------------------------------------------------

    @property
    def faults(self) -> Faults:
        """The active faults."""
        return self._backend.injector.faults

    def set_faults(self, faults: Faults | None) -> None:
        """Replace the active faults (``None`` switches them off); re-seeds the random draws."""
        self._backend.injector.set(faults or Faults())

    def __repr__(self) -> str:
        where = self._backend.url if self._server is not None else "stopped"
        return f"Emulator({where}, site_id={self.site_id!r})"
