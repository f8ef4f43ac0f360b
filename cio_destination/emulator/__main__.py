"""Run the Customer.io emulator: ``python -m cio_destination.emulator [options]``.

Serves until interrupted (Ctrl-C or SIGTERM), then exits 0.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from types import FrameType

from ._emulator import Emulator
from ._faults import Faults


def _is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cio_destination.emulator",
        description="A local Customer.io Track API (v1, v2) and App API send-email emulator.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument(
        "--port", type=int, default=8089, help="port (0 = a free one; default 8089)"
    )
    parser.add_argument(
        "--allow-remote", action="store_true", help="allow binding a non-loopback address"
    )
    parser.add_argument("--site-id", default="site", help="Track API site id (Basic user)")
    parser.add_argument("--api-key", default="key", help="Track API key (Basic password)")
    parser.add_argument("--app-api-key", default="app-key", help="App API bearer token")
    parser.add_argument(
        "--private-key",
        default=None,
        metavar="SK",
        help="a private key (sk_...) every endpoint also takes, as a bearer token (default: none)",
    )
    parser.add_argument("--region", default="us", choices=("us", "eu"))
    faults = parser.add_argument_group("faults")
    faults.add_argument(
        "--latency", type=float, default=0.0, metavar="S", help="seconds added to every answer"
    )
    faults.add_argument(
        "--latency-jitter", type=float, default=0.0, metavar="S", help="extra uniform 0..S seconds"
    )
    faults.add_argument(
        "--rate-limit", type=float, default=None, metavar="RPS", help="429 above RPS requests/s"
    )
    faults.add_argument(
        "--retry-after", type=int, default=1, metavar="N", help="Retry-After seconds on 429s"
    )
    faults.add_argument(
        "--http429-rate", type=float, default=0.0, metavar="F", help="fraction answered 429"
    )
    faults.add_argument(
        "--error-rate", type=float, default=0.0, metavar="F", help="fraction answered 500/503"
    )
    faults.add_argument(
        "--drop-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction closed without an answer, not applied",
    )
    faults.add_argument(
        "--lost-response-rate",
        type=float,
        default=0.0,
        metavar="F",
        help="fraction applied, then closed without an answer",
    )
    faults.add_argument(
        "--seed", type=int, default=None, metavar="N", help="random seed for reproducible faults"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv``, serve until interrupted, return the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if not _is_loopback(args.host) and not args.allow_remote:
        parser.error(
            f"refusing to listen on non-loopback host {args.host!r}; pass --allow-remote to do so"
        )
    try:
        faults = Faults(
            latency=args.latency,
            latency_jitter=args.latency_jitter,
            rate_limit=args.rate_limit,
            retry_after=args.retry_after,
            http429_rate=args.http429_rate,
            error_rate=args.error_rate,
            drop_rate=args.drop_rate,
            lost_response_rate=args.lost_response_rate,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))
    emulator = Emulator(
        site_id=args.site_id,
        api_key=args.api_key,
        app_api_key=args.app_api_key,
        host=args.host,
        port=args.port,
        faults=faults,
        region=args.region,
        private_key=args.private_key,
    )
    try:
        emulator.start()
    except OSError as exc:
        print(f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    stop = threading.Event()

    def _on_term(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, _on_term)
    keys = f"site_id={args.site_id}, api_key={args.api_key}"
    if args.private_key:
        keys += f"; or api_key={args.private_key} alone"
    print(f"Customer.io emulator listening on {emulator.url} ({keys})", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
