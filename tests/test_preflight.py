"""The per-load preflight: one region/credentials check before any data, and region="auto"."""

from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path

import dlt
import httpx
import pytest
from dlt.common.destination.exceptions import DestinationTerminalException
from dlt.pipeline.exceptions import PipelineStepFailed
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter, destination
from cio_destination.emulator import Emulator

from .conftest import API_KEY, SITE_ID, with_region
from .in_flight import InFlight

pytestmark = pytest.mark.slow  # whole dlt pipelines (against pytest-httpx or the emulator)


def people(name: str, count: int):
    rows = [{"uid": f"{name}-{i}", "plan": "pro"} for i in range(count)]
    return customerio_adapter(dlt.resource(rows, name=name), action="identify", identifier="uid")


def accept(request: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={})


def pipeline_for(tmp_path: Path, **options) -> dlt.Pipeline:
    destination = customerio(**{"site_id": "s", "api_key": "k", **options})
    return dlt.pipeline(
        "preflight", destination=destination, pipelines_dir=str(tmp_path), dev_mode=True
    )


def test_one_check_per_load_before_any_data(httpx_mock: HTTPXMock, tmp_path: Path):
    httpx_mock.add_callback(with_region(accept, "us"), is_reusable=True)
    pipeline = pipeline_for(tmp_path, max_request_bytes=2_000)

    pipeline.run([people("a", 100), people("b", 100)])
    pipeline.run([people("a", 10)])

    requests = httpx_mock.get_requests()
    checks = [i for i, r in enumerate(requests) if r.method == "GET"]
    first_load_posts = [i for i, r in enumerate(requests) if r.method == "POST"]
    assert len(checks) == 2  # one per load
    assert checks[0] == 0 and checks[0] < first_load_posts[0]
    assert all(str(r.url).startswith("https://track.customer.io/") for r in requests)


def test_the_check_runs_while_the_first_rows_are_mapped(
    httpx_mock: HTTPXMock, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    """The check's round trip overlaps the mapping of the table's first rows: the first
    mapping waits for the check to reach Customer.io, which a load that checks only when it
    sends its first rows never does (the wait then ends in vain, on progress, not on a time)."""
    checked = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/accounts/region":
            checked.set()
        return with_region(accept, "us")(request)

    httpx_mock.add_callback(answer, is_reusable=True)
    map_items = destination.map_items
    seen: list[bool] = []

    def mapped_after_the_check(*args, **kwargs):
        seen.append(checked.wait(30))
        return map_items(*args, **kwargs)

    monkeypatch.setattr(destination, "map_items", mapped_after_the_check)
    pipeline_for(tmp_path).run(people("a", 5))

    assert seen == [True]
    assert len(httpx_mock.get_requests(method="GET")) == 1
    assert len(httpx_mock.get_requests(method="POST")) == 1


def test_after_the_check_the_first_batches_go_together(httpx_mock: HTTPXMock, tmp_path: Path):
    """The check vouched for the credentials: a new workspace's first batch does not go alone
    (each batch is held until three are in flight, which one sent alone never reaches)."""
    in_flight = InFlight(3)

    def answer(request: httpx.Request) -> httpx.Response:
        with in_flight.request():
            return httpx.Response(200, json={})

    httpx_mock.add_callback(with_region(answer, "us"), is_reusable=True)

    pipeline_for(tmp_path, api_key="a-new-workspace", max_request_bytes=1_000).run(people("a", 100))

    assert in_flight.filled
    assert len(httpx_mock.get_requests(method="POST")) >= 3


def test_a_wrong_region_stops_the_load_naming_the_region(httpx_mock: HTTPXMock, tmp_path: Path):
    httpx_mock.add_callback(with_region(accept, "eu"), is_reusable=True)
    pipeline = pipeline_for(tmp_path, region="us")

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(people("a", 5))

    assert "in the 'eu' region" in str(raised.value)
    assert 'set region = "eu"' in str(raised.value)
    assert httpx_mock.get_requests(method="POST") == []


def test_region_auto_sends_to_the_workspace_region(httpx_mock: HTTPXMock, tmp_path: Path):
    httpx_mock.add_callback(with_region(accept, "eu"), is_reusable=True)
    pipeline = pipeline_for(tmp_path, region="auto")

    pipeline.run(people("a", 5))

    posts = httpx_mock.get_requests(method="POST")
    assert [str(r.url) for r in posts] == ["https://track-eu.customer.io/api/v2/batch"]


def test_bad_credentials_cost_one_request(emulator: Emulator, tmp_path: Path):
    destination = customerio(site_id=SITE_ID, api_key="nope", track_url=emulator.url)
    pipeline = dlt.pipeline("badcreds", destination=destination, pipelines_dir=str(tmp_path))

    with pytest.raises(PipelineStepFailed):
        pipeline.run([people("a", 50), people("b", 50)])

    assert [(r.method, r.path, r.status) for r in emulator.requests] == [
        ("GET", "/api/v1/accounts/region", 401)
    ]
    fixed = dlt.pipeline(
        "badcreds",
        destination=customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url),
        pipelines_dir=str(tmp_path),
    )
    fixed.run()
    assert len(emulator.people) == 100


def test_the_region_is_checked_on_every_load(httpx_mock: HTTPXMock, tmp_path: Path):
    region = {"now": "us"}

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/accounts/region":
            return httpx.Response(200, json={"region": region["now"]})
        return httpx.Response(200, json={})

    httpx_mock.add_callback(answer, is_reusable=True)
    pipeline = pipeline_for(tmp_path, region="us", api_key="moved-workspace-key")
    pipeline.run(people("a", 5))
    region["now"] = "eu"

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run(people("b", 5))

    assert 'set region = "eu"' in str(raised.value)
    assert len(httpx_mock.get_requests(method="POST")) == 1  # only the first load's batch


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_an_unreachable_customerio_stops_the_load_at_the_first_refusal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
):
    url = f"http://127.0.0.1:{closed_port()}"
    pipeline = pipeline_for(tmp_path, track_url=url)
    caplog.set_level(logging.DEBUG, logger="cio_destination")

    with pytest.raises(PipelineStepFailed) as raised:
        pipeline.run([people("a", 5), people("b", 5)])

    assert isinstance(raised.value.exception, DestinationTerminalException)  # dlt did not retry
    message = str(raised.value)
    assert f"cannot connect to Customer.io Track API at {url} (" in message
    assert "check destination.customerio.track_url" in message
    assert [r for r in caplog.records if r.name == "cio_destination"] == []  # no retries


@pytest.mark.parametrize("region", ["us", "eu", "auto"])
def test_the_region_is_compared_with_track_url_set(tmp_path: Path, region: str):
    with Emulator(site_id=SITE_ID, api_key=API_KEY, region="eu") as eu:
        pipeline = dlt.pipeline(
            f"wrong_region_{region}",
            destination=customerio(
                site_id=SITE_ID, api_key=API_KEY, track_url=eu.url, region=region
            ),
            pipelines_dir=str(tmp_path),
            dev_mode=True,
        )
        if region == "us":
            with pytest.raises(PipelineStepFailed) as raised:
                pipeline.run(people("a", 5))
            assert "in the 'eu' region" in str(raised.value)
            assert 'set region = "eu"' in str(raised.value)
            assert [r.path for r in eu.requests] == ["/api/v1/accounts/region"]
        else:  # "auto" adopts the workspace's region and keeps the URL
            pipeline.run(people("a", 5))
            assert len(eu.people) == 5
