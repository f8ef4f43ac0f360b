"""Base URL checks: https, or plain http to a literal loopback host; never a secret in a URL."""

from __future__ import annotations

import pytest
from dlt.common.configuration.exceptions import ConfigurationValueError

from cio_destination.configuration import check_base_url, is_loopback


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
