"""The configspec: base URL checks (https, or plain http to a literal loopback host; never a
secret in a URL), and the lists of keys that derive from it."""

from __future__ import annotations

import dataclasses
import inspect
import re
from pathlib import Path

import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError

from cio_destination import customerio
from cio_destination.configuration import (
    CUSTOMERIO_KEYS,
    CustomerioConfiguration,
    check_base_url,
    is_loopback,
)

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST", "127.0.0.1", "127.8.9.10", "::1", "[::1]"]
)
def test_literal_loopback_hosts_are_loopback(host: str):
    assert is_loopback(host)


@pytest.mark.parametrize(
    "host",
    ["x.localhost", "evil.localhost", "localhost.example.com", "10.0.0.1", "example.com", "::2"],
)
def test_other_hosts_are_not_loopback(host: str):
    assert not is_loopback(host)


@pytest.mark.parametrize(
    "url",
    ["http://127.0.0.1:8089", "http://localhost:8089/", "http://[::1]:8089", "https://proxy.corp"],
)
def test_accepted_base_urls(url: str):
    assert check_base_url("track_url", url) == url.rstrip("/")


def test_plain_http_to_a_localhost_subdomain_is_refused():
    with pytest.raises(ConfigurationValueError) as raised:
        check_base_url("track_url", "http://x.localhost:8089")
    assert "destination.customerio.track_url must use https://" in str(raised.value)


@pytest.mark.parametrize(
    "url",
    [
        "https://site-1:s3cr3t-pw@track.customer.io",
        "http://site-1:s3cr3t-pw@127.0.0.1:8089",
        "https://s3cr3t-pw@track.customer.io",
        "https://site-1:@track.customer.io",
    ],
)
@pytest.mark.parametrize("key", ["track_url", "app_url"])
def test_credentials_in_a_url_are_refused_without_repeating_them(key: str, url: str):
    with pytest.raises(ConfigurationValueError) as raised:
        check_base_url(key, url)
    message = str(raised.value)
    assert f"destination.customerio.{key}" in message
    assert "user:password@" in message
    assert "s3cr3t" not in message and "site-1" not in message


@pytest.mark.parametrize(
    "url", ["https://proxy.corp/?token=s3cr3t-pw", "https://proxy.corp/#s3cr3t-pw"]
)
def test_a_query_or_fragment_in_a_base_url_is_refused(url: str):
    with pytest.raises(ConfigurationValueError) as raised:
        check_base_url("track_url", url)
    assert "s3cr3t" not in str(raised.value)
    assert "destination.customerio.track_url" in str(raised.value)


def test_customerio_shows_every_key_as_a_keyword_argument():
    parameters = inspect.signature(customerio).parameters

    assert list(parameters) == list(CUSTOMERIO_KEYS)
    assert parameters["region"].default == "us"
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())


def test_the_readme_documents_every_key():
    text = README.read_text(encoding="utf-8")
    table = text[text.index("| key | default | meaning |") :].split("\n\n")[0]
    documented = {
        key for row in table.splitlines()[2:] for key in re.findall(r"`(\w+)`", row.split("|")[1])
    }

    assert documented == set(CUSTOMERIO_KEYS)


def config(**values) -> CustomerioConfiguration:
    return dataclasses.replace(CustomerioConfiguration(site_id="site", api_key="key"), **values)


@pytest.mark.parametrize(
    "values",
    [
        {"tables": {"people": {"action": "identify", "identifier": "uid"}}},
        {"dry_run": True},
        {"resend_uncertain": True},
        {"accept_new_send_ledger": True},
        {"fingerprints_url": "sqlite:///fingerprints.db"},
    ],
)
def test_keys_of_a_load_share_the_workspace_and_its_rate(values: dict):
    assert config(**values).workspace_key() == config().workspace_key()


@pytest.mark.parametrize(
    "values",
    [
        {"site_id": "other"},
        {"api_key": "other"},
        {"app_api_key": "app"},
        {"region": "eu"},
        {"track_url": "http://127.0.0.1:8089"},
        {"app_url": "http://127.0.0.1:8089"},
        {"requests_per_second": 5.0},
        {"app_requests_per_second": 5.0},
        {"max_attempts": 2},
        {"timeout": 5.0},
        {"max_request_bytes": 2_000},
        {"max_concurrent_requests": 2},
    ],
)
def test_keys_of_the_connection_make_another_workspace(values: dict):
    assert config(**values).workspace_key() != config().workspace_key()


def test_a_workspace_key_holds_no_secret():
    key = config(site_id="site-Qz81", api_key="key-Xv93", app_api_key="app-Pw27").workspace_key()

    assert not {"site-Qz81", "key-Xv93", "app-Pw27"} & {str(v) for v in key}


@pytest.mark.parametrize("key", ["site_id", "api_key", "app_api_key"])
@pytest.mark.parametrize(
    "value",
    [
        "Qz81\n",
        "Qz81\r\n",
        " Qz81",
        "Qz 81",
        "Qz81\t",
        "Qz\x0081",
        "Qz\x7f81",
        "Qz\u00e981",
        "Qz\u200b81",
    ],
    ids=[
        "newline",
        "crlf",
        "leading_space",
        "space",
        "tab",
        "nul",
        "del",
        "non_ascii",
        "zero_width",
    ],
)
def test_a_credential_with_whitespace_control_or_non_ascii_characters_is_refused(
    key: str, value: str
):
    with pytest.raises(ConfigurationValueError) as raised:
        config(**{key: value}).on_resolved()

    message = str(raised.value)
    assert f"destination.customerio.{key} holds whitespace" in message
    assert "Qz" not in message


def test_credentials_as_customerio_makes_them_are_accepted():
    config(site_id="a1b2c3", api_key="live-Xv93_+/=", app_api_key="Pw27.x~").on_resolved()
    config(site_id=None, api_key="sk_live-Xv93_+/=", app_api_key=None).on_resolved()
