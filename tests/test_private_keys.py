"""Customer.io's private keys (`sk_...`): one key alone for the Track API, its region check and
the App API; the older pair keeps working; a mix of the two is a config error before any request.

How a private key travels (`Authorization: Bearer sk_...` everywhere) is decided in
`cio_destination.transport.credentials`; these tests hold every request to it."""

from __future__ import annotations

import base64
import dataclasses
from pathlib import Path

import dlt
import httpx
import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError
from pytest_httpx import HTTPXMock

from cio_destination import customerio, customerio_adapter, exit_status
from cio_destination.configuration import CustomerioConfiguration
from cio_destination.emulator import Emulator
from cio_destination.exceptions import CredentialsError
from cio_destination.transport.app import AppClient
from cio_destination.transport.ratelimit import RateLimiter
from cio_destination.transport.results import SendStats
from cio_destination.transport.track import TrackClient

from .conftest import API_KEY, SITE_ID

PRIVATE = "sk_test_Zr8q2"
BEARER = f"Bearer {PRIVATE}"


def configured(**values: str | None) -> CustomerioConfiguration:
    config = dataclasses.replace(CustomerioConfiguration(site_id=None, api_key=PRIVATE), **values)
    config.on_resolved()
    return config


def people(count: int = 3):
    rows = [{"uid": f"u-{i}", "plan": "pro"} for i in range(count)]
    return customerio_adapter(
        dlt.resource(rows, name="people"), action="identify", identifier="uid"
    )


def receipts(count: int = 2):
    rows = [{"receipt_id": i, "email": f"b{i}@example.com", "total": 5} for i in range(count)]
    return customerio_adapter(
        dlt.resource(rows, name="receipts"),
        action="send_email",
        identifier="email",
        identifier_type="email",
        transactional_message_id="7",
        to="email",
        event_id="receipt_id",
    )


# -- the config ------------------------------------------------------------------------------


def test_a_private_key_alone_is_a_complete_config():
    config = configured()
    assert config.app_credential() == (PRIVATE, "api_key")  # it sends emails too


def test_the_older_pair_keeps_working():
    config = configured(site_id="site-1", api_key="track-key", app_api_key="app-key")
    assert config.app_credential() == ("app-key", "app_api_key")
    assert configured(site_id="site-1", api_key="track-key").app_credential() is None


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"site_id": "site-1"}, ["destination.customerio.site_id"]),
        ({"app_api_key": "app-key"}, ["destination.customerio.app_api_key"]),
        (
            {"site_id": "site-1", "app_api_key": "app-key"},
            ["destination.customerio.site_id", "destination.customerio.app_api_key"],
        ),
        (
            {"site_id": "site-1", "api_key": "track-key", "app_api_key": PRIVATE},
            ["destination.customerio.app_api_key", "destination.customerio.api_key"],
        ),
        ({"api_key": "track-key"}, ["destination.customerio.site_id"]),
        ({"api_key": "pk_live_1"}, ["destination.customerio.api_key", "pk_"]),
    ],
    ids=[
        "private_and_site_id",
        "private_and_app_api_key",
        "private_and_both",
        "private_key_as_app_api_key",
        "track_key_without_site_id",
        "public_key",
    ],
)
def test_a_mixed_or_incomplete_config_is_refused_naming_the_keys(values: dict, named: list[str]):
    with pytest.raises(ConfigurationValueError) as raised:
        configured(**values)
    message = str(raised.value)
    for part in named:
        assert part in message
    for value in values.values():  # keys are named, never their values
        if value not in ("pk_live_1",):
            assert value not in message


# -- the clients, against pytest-httpx --------------------------------------------------------


def test_a_private_key_reaches_the_track_api_and_its_region_check_as_a_bearer_token(
    httpx_mock: HTTPXMock,
):
    httpx_mock.add_response(
        url="https://track.customer.io/api/v1/accounts/region",
        json={"url": "https://track.customer.io", "region": "us", "environment_id": 1},
    )
    httpx_mock.add_response(url="https://track.customer.io/api/v2/batch", method="POST", json={})
    client = TrackClient("https://track.customer.io", "", PRIVATE, limiter=RateLimiter(100))
    from .test_client import entry

    assert client.account_region() == "us"
    client.send_batch([entry(1)])

    requests = httpx_mock.get_requests()
    assert [r.headers["authorization"] for r in requests] == [BEARER, BEARER]


def test_the_older_pair_reaches_the_track_api_as_http_basic(httpx_mock: HTTPXMock):
    httpx_mock.add_response(url="https://track.customer.io/api/v2/batch", method="POST", json={})
    client = TrackClient("https://track.customer.io", "site-1", "key-1", limiter=RateLimiter(100))
    from .test_client import entry

    client.send_batch([entry(1)])

    basic = base64.b64encode(b"site-1:key-1").decode()
    assert httpx_mock.get_request().headers["authorization"] == f"Basic {basic}"


def test_a_private_key_reaches_the_app_api_as_a_bearer_token(httpx_mock: HTTPXMock):
    httpx_mock.add_response(url="https://api.customer.io/v1/send/email", json={"delivery_id": "d"})
    client = AppClient("https://api.customer.io", PRIVATE, "api_key", limiter=RateLimiter(10))

    client.send_email(b"{}", SendStats())

    assert httpx_mock.get_request().headers["authorization"] == BEARER


@pytest.mark.parametrize("api", ["track", "app"])
def test_a_refused_private_key_names_api_key_alone(httpx_mock: HTTPXMock, api: str):
    httpx_mock.add_response(status_code=401, json={})
    if api == "track":
        client: TrackClient | AppClient = TrackClient(
            "https://track.customer.io", "", PRIVATE, limiter=RateLimiter(100)
        )
        call = lambda: client.account_region()  # noqa: E731
    else:
        client = AppClient("https://api.customer.io", PRIVATE, "api_key", limiter=RateLimiter(10))
        call = lambda: client.send_email(b"{}", SendStats())  # noqa: E731

    with pytest.raises(CredentialsError) as raised:
        call()

    assert raised.value.keys == ("api_key",)
    assert "site_id" not in str(raised.value) and "app_api_key" not in str(raised.value)


# -- whole pipelines ----------------------------------------------------------------------------


def _bearer_everywhere(request: httpx.Request) -> httpx.Response:
    if request.headers.get("authorization") != BEARER:
        return httpx.Response(401, json={})
    if request.url.path == "/api/v1/accounts/region":
        return httpx.Response(200, json={"url": "", "region": "us", "environment_id": 1})
    if request.url.path == "/v1/send/email":
        return httpx.Response(200, json={"delivery_id": "d", "queued_at": 1})
    return httpx.Response(200, json={})


@pytest.mark.slow
def test_a_private_key_alone_runs_every_api_on_customerios_hosts(
    httpx_mock: HTTPXMock, tmp_path: Path
):
    httpx_mock.add_callback(_bearer_everywhere, is_reusable=True)
    pipeline = dlt.pipeline(
        "private_key",
        destination=customerio(api_key=PRIVATE),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )

    pipeline.run([people(), receipts()])

    requests = httpx_mock.get_requests()
    by_target = {(r.method, str(r.url)) for r in requests}
    assert by_target == {
        ("GET", "https://track.customer.io/api/v1/accounts/region"),
        ("POST", "https://track.customer.io/api/v2/batch"),
        ("POST", "https://api.customer.io/v1/send/email"),
    }
    assert {r.headers["authorization"] for r in requests} == {BEARER}
    assert requests[0].url.path == "/api/v1/accounts/region"  # the preflight, first
    assert len(httpx_mock.get_requests(url="https://api.customer.io/v1/send/email")) == 2


@pytest.mark.slow
@pytest.mark.parametrize("mixed", [{"site_id": "site-1"}, {"app_api_key": "app-key"}])
def test_a_mixed_config_fails_before_any_request(
    httpx_mock: HTTPXMock, tmp_path: Path, mixed: dict[str, str]
):
    pipeline = dlt.pipeline(
        "mixed",
        destination=customerio(api_key=PRIVATE, **mixed),
        pipelines_dir=str(tmp_path),
        dev_mode=True,
    )

    with pytest.raises(ConfigurationValueError) as raised:  # dlt raises config errors as such
        pipeline.run(people())

    assert httpx_mock.get_requests() == []
    status = exit_status(raised.value)
    assert status is not None
    code, line = status
    assert code == 2
    assert f"destination.customerio.{next(iter(mixed))}" in line
    assert "private key" in line


@pytest.mark.slow
def test_a_private_key_alone_against_the_emulator(tmp_path: Path):
    with Emulator(site_id=SITE_ID, api_key=API_KEY, private_key=PRIVATE) as emulator:
        pipeline = dlt.pipeline(
            "private_emulator",
            destination=customerio(api_key=PRIVATE, track_url=emulator.url, app_url=emulator.url),
            pipelines_dir=str(tmp_path),
            dev_mode=True,
        )
        pipeline.run([people(), receipts()])

        assert sorted(p["identifiers"]["id"] for p in emulator.people) == ["u-0", "u-1", "u-2"]
        assert len(emulator.deliveries) == 2
        paths = [(r.path, r.status) for r in emulator.requests]
        assert paths[0] == ("/api/v1/accounts/region", 200)
        assert all(status == 200 for _, status in paths)

        # the older pair works against the same workspace
        older = dlt.pipeline(
            "pair_emulator",
            destination=customerio(site_id=SITE_ID, api_key=API_KEY, track_url=emulator.url),
            pipelines_dir=str(tmp_path),
            dev_mode=True,
        )
        older.run(people(5))
        assert len(emulator.people) == 5


def test_the_emulator_takes_a_private_key_on_every_endpoint_and_only_when_it_has_one():
    with Emulator(private_key=PRIVATE) as emulator, httpx.Client(base_url=emulator.url) as http:
        bearer = {"authorization": BEARER}
        assert http.get("/api/v1/accounts/region", headers=bearer).status_code == 200
        assert http.post("/api/v2/batch", json={"batch": []}, headers=bearer).status_code == 200
        wrong = {"authorization": "Bearer sk_other"}
        assert http.get("/api/v1/accounts/region", headers=wrong).status_code == 401
        basic = httpx.BasicAuth("site", "key")
        assert http.get("/api/v1/accounts/region", auth=basic).status_code == 200
    with Emulator() as emulator, httpx.Client(base_url=emulator.url) as http:
        assert http.get("/api/v1/accounts/region", headers=bearer).status_code == 401
