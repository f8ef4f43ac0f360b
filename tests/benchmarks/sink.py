"""A lean Track API sink for throughput runs: reads every body, counts, answers `200 {}`.

It runs in its own process (`python -m tests.benchmarks.sink`), so it never competes for the
measured process's GIL, on 127.0.0.1 and a free port. It speaks just enough HTTP/1.1 for keep-alive
clients: a request line, headers up to the blank line, a `Content-Length` body. Routes:

* `POST /api/v2/batch`: one request, `body.count(b'"identifiers":')` operations;
* `PUT /api/v1/customers/<id>`: one request, one operation;
* `GET /api/v1/accounts/region`: the destination's credential and region check, `us`;
* `GET /_sink/stats`: the counters as JSON (times are `time.monotonic()`, which every process
  on the machine shares); `POST /_sink/reset?latency=<seconds>`: zero them and set the fixed
  delay before each Track API answer (0 by default).

Basic auth is checked by comparing the `Authorization` header with the expected bytes; a
mismatch answers 401 and is counted. Every 16th batch body is also parsed in full, and a body
that is not `{"batch": [...]}` with as many operations as counted is counted as malformed.
Latency is applied per connection with `call_later`, so hundreds of connections wait at once.

Started by `SinkProcess`, the sink watches its standard input (`--exit-with-parent`) and exits
when it closes, so it never outlives the benchmark that started it, however that one ends
(SIGTERM, SIGKILL, an exception).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from typing import Any

import orjson

_OPS_MARK = b'"identifiers":'
_OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
_UNAUTHORIZED = (
    b"HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)
_NOT_FOUND = (
    b"HTTP/1.1 404 Not Found\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
)
_REGION_BODY = b'{"url":"https://track.customer.io","region":"us","environment_id":1}'
_REGION = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(_REGION_BODY)).encode()
    + b"\r\n\r\n"
    + _REGION_BODY
)
_PARSE_EVERY = 16


class Counters:
    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.batch_requests = 0
        self.v1_requests = 0
        self.region_requests = 0
        self.ops = 0
        self.body_bytes = 0
        self.max_body_bytes = 0
        self.unauthorized = 0
        self.not_found = 0
        self.malformed = 0
        self.parsed = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.first_request: float | None = None
        self.first_batch: float | None = None
        self.last_request: float | None = None
        self.last_answer: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(vars(self))


class SinkProtocol(asyncio.Protocol):
    """One keep-alive connection: parse requests off the buffer, answer each in order."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.head: tuple[bytes, bytes, dict[bytes, bytes]] | None = None
        self.need = 0
        self.busy = False  # a delayed answer is pending: keep later requests in the buffer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self.process()

    def process(self) -> None:
        while not self.busy and self.transport is not None:
            if self.head is None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                lines = bytes(self.buffer[:end]).split(b"\r\n")
                del self.buffer[: end + 4]
                method, target, _ = lines[0].split(b" ", 2)
                headers = {}
                for line in lines[1:]:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
                self.head = (method, target, headers)
                self.need = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < self.need:
                return
            body = bytes(self.buffer[: self.need])
            del self.buffer[: self.need]
            method, target, headers = self.head
            self.head = None
            self.handle(method, target, headers, body)

    def handle(
        self, method: bytes, target: bytes, headers: dict[bytes, bytes], body: bytes
    ) -> None:
        sink = self.sink
        counters = sink.counters
        assert self.transport is not None
        if target.startswith(b"/_sink/"):
            self.transport.write(sink.control(method, target))
            return
        now = time.monotonic()
        if counters.first_request is None:
            counters.first_request = now
        counters.last_request = now
        if headers.get(b"authorization") != sink.authorization:
            counters.unauthorized += 1
            self.transport.write(_UNAUTHORIZED)
            return
        answer = _OK
        if method == b"POST" and target == b"/api/v2/batch":
            if counters.first_batch is None:
                counters.first_batch = now
            counters.batch_requests += 1
            ops = body.count(_OPS_MARK)
            if counters.batch_requests % _PARSE_EVERY == 1:
                counters.parsed += 1
                counters.malformed += not _well_formed(body, ops)
        elif method == b"PUT" and target.startswith(b"/api/v1/customers/"):
            counters.v1_requests += 1
            ops = 1
        elif method == b"GET" and target == b"/api/v1/accounts/region":
            counters.region_requests += 1
            ops = 0
            answer = _REGION
        else:
            counters.not_found += 1
            self.transport.write(_NOT_FOUND)
            return
        counters.ops += ops
        counters.body_bytes += len(body)
        counters.max_body_bytes = max(counters.max_body_bytes, len(body))
        if sink.latency <= 0:
            self.answer(answer)
            return
        counters.in_flight += 1
        counters.max_in_flight = max(counters.max_in_flight, counters.in_flight)
        self.busy = True
        asyncio.get_running_loop().call_later(sink.latency, self.answer_later, answer)

    def answer(self, answer: bytes) -> None:
        assert self.transport is not None
        self.transport.write(answer)
        self.sink.counters.last_answer = time.monotonic()

    def answer_later(self, answer: bytes) -> None:
        self.sink.counters.in_flight -= 1
        self.busy = False
        if self.transport is None or self.transport.is_closing():
            return
        self.answer(answer)
        self.process()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None


def _well_formed(body: bytes, ops: int) -> bool:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    batch = payload.get("batch") if isinstance(payload, dict) else None
    return isinstance(batch, list) and len(batch) == ops and all("identifiers" in b for b in batch)


class Sink:
    def __init__(self, site_id: str, api_key: str) -> None:
        token = base64.b64encode(f"{site_id}:{api_key}".encode()).decode()
        self.authorization = f"Basic {token}".encode()
        self.counters = Counters()
        self.latency = 0.0

    def control(self, method: bytes, target: bytes) -> bytes:
        path, _, query = target.partition(b"?")
        if method == b"POST" and path == b"/_sink/reset":
            params = dict(p.partition(b"=")[::2] for p in query.split(b"&") if p)
            self.latency = float(params.get(b"latency", b"0"))
            self.counters.reset()
            payload = b"{}"
        elif path == b"/_sink/stats":
            payload = orjson.dumps({**self.counters.as_dict(), "latency": self.latency})
        else:
            return _NOT_FOUND
        return (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(payload)).encode()
            + b"\r\n\r\n"
            + payload
        )


async def serve(site_id: str, api_key: str, port: int) -> None:
    sink = Sink(site_id, api_key)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SinkProtocol(sink), "127.0.0.1", port, backlog=1024, reuse_address=True
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"PORT {bound}", flush=True)
    async with server:
        await server.serve_forever()


def exit_when_stdin_closes() -> None:
    """Exit the process once standard input reaches its end: the parent holding the other end
    of the pipe is gone."""

    def watch() -> None:
        while sys.stdin.buffer.read(4096):
            pass
        os._exit(0)

    threading.Thread(target=watch, name="sink-parent-watch", daemon=True).start()


def terminate_as_exit() -> None:
    """Turn SIGTERM into `SystemExit` in this (main) thread, so the `with` blocks of a benchmark
    stopped by SIGTERM still stop the servers it started (a throwaway PostgreSQL, the sink)."""

    def exit_(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, exit_)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site-id", default="bench-site")
    parser.add_argument("--api-key", default="bench-key")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="exit when standard input closes"
    )
    args = parser.parse_args()
    if args.exit_with_parent:
        exit_when_stdin_closes()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.site_id, args.api_key, args.port))


class SinkProcess:
    """Start the sink in a child process; query and reset its counters from the parent."""

    def __init__(self, site_id: str, api_key: str) -> None:
        self.site_id = site_id
        self.api_key = api_key
        self.process: subprocess.Popen[str] | None = None
        self.url = ""

    def __enter__(self) -> SinkProcess:
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.benchmarks.sink",
                "--site-id",
                self.site_id,
                "--api-key",
                self.api_key,
                "--exit-with-parent",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=os.getcwd(),
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the sink did not start: {line!r}")
        self.url = f"http://127.0.0.1:{int(line.split()[1])}"
        return self

    def __exit__(self, *exc: object) -> None:
        if self.process is not None:
            assert self.process.stdin is not None
            self.process.stdin.close()
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _call(self, method: str, path: str) -> dict[str, Any]:
        import httpx

        response = httpx.request(method, self.url + path, timeout=10)
        response.raise_for_status()
        return orjson.loads(response.content)

    def reset(self, latency: float = 0.0) -> None:
        self._call("POST", f"/_sink/reset?latency={latency}")

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "/_sink/stats")


if __name__ == "__main__":
    main()
