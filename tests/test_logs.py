"""No secret and no attribute value reaches a log record, at any level, from any logger the
destination drives (its own, httpx's, httpcore's)."""

from __future__ import annotations

import base64
import logging
import random
import traceback
from collections.abc import Iterator
from pathlib import Path

import dlt
import orjson
import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter, rejected_rows
from cio_destination.emulator import Emulator
from cio_destination.entries import Entry
from cio_destination.transport.api import OutcomeUnknown, RetryPolicy
from cio_destination.transport.app import AppClient
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats
from cio_destination.transport.track import TrackClient

SITE = "site-Qz81rT"
KEY = "key-Xv93pL"
APP_KEY = "app-Pw27mN"
SECRETS = [
    SITE,
    KEY,
    APP_KEY,
    base64.b64encode(f"{SITE}:{KEY}".encode()).decode(),
    f"Bearer {APP_KEY}",
]
EMAIL = "ada.kx4@example.com"
PLAN = "plan-Ur55wq"
VALUES = [EMAIL, PLAN, "uid-Hm64", "Ada Kx4"]
LOGGERS = ["", "cio_destination", "httpx", "httpcore"]


@pytest.fixture
def every_record() -> Iterator[list[logging.LogRecord]]:
    """Every logger the destination drives at DEBUG, and every record they emit."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep(logging.DEBUG)
    levels = {name: logging.getLogger(name).level for name in LOGGERS}
    for name in LOGGERS:
        logging.getLogger(name).setLevel(logging.DEBUG)
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def leaks(records: list[logging.LogRecord]) -> list[str]:
    found = []
    for record in records:
        text = record.getMessage()
        if record.exc_info:
            text += "".join(traceback.format_exception(*record.exc_info))
        for needle in SECRETS + VALUES:
            if needle in text:
                found.append(f"{record.name}:{record.levelname}: {needle!r} in {text[:200]!r}")
    return found


def test_client_sends_log_no_secret_and_no_value(
    httpx_mock: HTTPXMock, every_record: list[logging.LogRecord]
):
    op = {
        "type": "person",
        "action": "identify",
        "identifiers": {"email": EMAIL},
        "attributes": {"plan": PLAN, "name": "Ada Kx4"},
    }
    echo = f"value '{PLAN}' of {EMAIL} is not allowed"
    httpx_mock.add_response(status_code=503)
    httpx_mock.add_response(status_code=400, json={"errors": [{"reason": "x", "message": echo}]})
    httpx_mock.add_response(
        status_code=207, json={"errors": [{"batch_index": 0, "reason": "x", "message": echo}]}
    )
    httpx_mock.add_response(status_code=400, json={"meta": {"error": echo}})
    httpx_mock.add_response(status_code=502)
    sleep = lambda seconds: None  # noqa: E731
    track = TrackClient(
        "https://track.customer.io",
        SITE,
        KEY,
        limiter=RateLimiter(1000),
        retry=RetryPolicy(),
        sleep=sleep,
        rng=random.Random(1),
    )
    app = AppClient("https://api.customer.io", APP_KEY, limiter=RateLimiter(1000), sleep=sleep)
    entry = Entry(orjson.dumps(op), "uid-Hm64", [{"uid": "uid-Hm64", "plan": PLAN}])

    first = track.send_batch([entry])
    second = track.send_batch([entry])
    refused = app.send_email(
        orjson.dumps({"to": EMAIL, "message_data": {"plan": PLAN}}), SendStats()
    )
    with pytest.raises(OutcomeUnknown) as unknown:
        app.send_email(orjson.dumps({"to": EMAIL}), SendStats())

    assert first.rejections and second.rejections and refused.rejection
    assert every_record, "the loggers were not captured"
    assert leaks(every_record) == []
    assert not [needle for needle in SECRETS + VALUES if needle in str(unknown.value)]


@pytest.mark.slow
def test_a_pipeline_at_debug_logs_no_secret_and_no_value(
    every_record: list[logging.LogRecord], tmp_path: Path
):
    people = [{"uid": "uid-Hm64", "email": EMAIL, "plan": PLAN, "name": "Ada Kx4"}]
    too_long = [{"uid": "u" * 200, "plan": PLAN}]
    sends = [{"receipt_id": 1, "email": EMAIL, "plan": PLAN}]
    with Emulator(site_id=SITE, api_key=KEY, app_api_key=APP_KEY) as emulator:
        destination = customerio(
            site_id=SITE,
            api_key=KEY,
            app_api_key=APP_KEY,
            track_url=emulator.url,
            app_url=emulator.url,
        )
        pipeline = dlt.pipeline(
            "logs", destination=destination, pipelines_dir=str(tmp_path), dev_mode=True
        )
        pipeline.run(
            [
                customerio_adapter(
                    dlt.resource(people + too_long, name="people"),
                    action="identify",
                    identifier="uid",
                ),
                customerio_adapter(
                    dlt.resource(sends, name="receipts"),
                    action="send_email",
                    identifier="email",
                    identifier_type="email",
                    transactional_message_id=3,
                    to="email",
                    event_id="receipt_id",
                ),
            ]
        )
        assert len(emulator.people) == 1 and len(emulator.deliveries) == 1

    assert len(list(rejected_rows(pipeline))) == 1
    assert {r.name.split(".")[0] for r in every_record} >= {"httpx", "httpcore"}
    assert leaks(every_record) == []


@pytest.mark.slow
def test_credentials_in_the_url_stop_the_load_before_any_request_or_record(
    every_record: list[logging.LogRecord], tmp_path: Path
):
    people = [{"uid": "uid-Hm64", "plan": PLAN}]
    with Emulator(site_id=SITE, api_key=KEY, app_api_key=APP_KEY) as emulator:
        url = emulator.url.replace("http://", f"http://{SITE}:{KEY}@")
        destination = customerio(site_id=SITE, api_key=KEY, track_url=url)
        pipeline = dlt.pipeline(
            "url_creds", destination=destination, pipelines_dir=str(tmp_path), dev_mode=True
        )
        with pytest.raises(ConfigurationValueError) as raised:
            pipeline.run(
                customerio_adapter(
                    dlt.resource(people, name="people"), action="identify", identifier="uid"
                )
            )
        assert emulator.requests == []

    assert "destination.customerio.track_url" in str(raised.value)
    assert not [s for s in SECRETS if s in str(raised.value)]
    assert leaks(every_record) == []
