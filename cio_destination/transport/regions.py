"""Customer.io's regions: each one's hosts, and the region a workspace's requests go to.

A workspace lives in one region, `us` or `eu`. The preflight of every load
(`GET /api/v1/accounts/region`, `cio_destination.transport.workspace`) asks Customer.io which
one: a `region` set to another stops the load, naming the one to set, and `region = "auto"`
adopts the answer. `track_url` / `app_url` replace the region's hosts (the local emulator, a
proxy); the region is checked all the same, since either can stand before either region.
"""

from __future__ import annotations

from typing import Any

from cio_destination.exceptions import CustomerioTerminalError

TRACK_HOSTS = {"us": "https://track.customer.io", "eu": "https://track-eu.customer.io"}
APP_HOSTS = {"us": "https://api.customer.io", "eu": "https://api-eu.customer.io"}
REGIONS = (*TRACK_HOSTS, "auto")
"""The values of the `region` setting."""


def known_region(answer: Any) -> str | None:
    """The region a preflight answer names, or None when it names none of Customer.io's."""
    return answer if answer in TRACK_HOSTS else None


def first_region(setting: str) -> str:
    """The region asked before Customer.io has answered: the setting's, `us` for `auto`."""
    return "us" if setting == "auto" else setting


def settled_region(setting: str, found: str | None, known: str | None) -> str:
    """The region to send to once the preflight found the workspace in `found` (None: no
    answer that names one); `known` is the region an earlier load settled on.

    Raises `CustomerioTerminalError`, naming the region to set, when `region` is set to another.
    """
    configured = first_region(setting)
    if setting != "auto":
        if found and found != configured:
            raise CustomerioTerminalError(
                f"the Customer.io workspace is in the '{found}' region but"
                f" destination.customerio.region is '{configured}': set region = \"{found}\""
                ' (or "auto")'
            )
        return configured
    return found or known or configured


def track_url(override: str | None, region: str) -> str:
    """The Track API's base URL: `track_url`, else the region's host."""
    return override or TRACK_HOSTS[region]


def app_url(override: str | None, region: str) -> str:
    """The App API's base URL: `app_url`, else the region's host."""
    return override or APP_HOSTS[region]


def url_source(override: str | None, key: str) -> str:
    """The setting that chose a base URL (`key` when it overrides the host, else `region`):
    an error about the URL names it."""
    return key if override else "region"
