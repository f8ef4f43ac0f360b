"""Customer.io credentials: which keys a config uses, and how a request carries them.

A workspace is reached with one of two kinds of credentials:

* a private key (`sk_...`, Customer.io's keys since 2026-10-30) in `api_key` alone: one key for
  the Track API, its region check and the App API, with no site id;
* the pair Customer.io gave before (still working): `site_id` + `api_key` (a Track API key),
  sent to the Track API as HTTP Basic `site_id:api_key`, and `app_api_key` for the App API,
  sent as `Authorization: Bearer <app_api_key>`.

A config holds one kind, never both: `credential_problem` says what is wrong with a mix.

How a private key travels is decided here and nowhere else (`private_key_auth`). Customer.io's
release notes ("Public and private API keys for Customer.io APIs") say a private key works with
every API, without a site id, but the API reference this project could read documents only the
pair's schemes: HTTP Basic for the Track API (its region check included), Bearer for the App
API. It does not say which scheme a private key takes on the Track API. We send it as
`Authorization: Bearer sk_...` to every API: the scheme Customer.io documents for a single key,
and the one its App API already takes. Should Customer.io document another scheme for the Track
API, this module is the one place to change.
"""

from __future__ import annotations

from collections.abc import Generator

import httpx

PRIVATE_KEY_PREFIX = "sk_"
"""Customer.io's private (server) keys start with it."""
PUBLIC_KEY_PREFIX = "pk_"
"""Customer.io's public (browser, mobile) keys start with it: they cannot send messages."""


class BearerAuth(httpx.Auth):
    """`Authorization: Bearer <token>` on every request."""

    def __init__(self, token: str) -> None:
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["authorization"] = self._header
        yield request


def private_key_auth(key: str) -> httpx.Auth:
    """How a private key is sent to every API, its region check included:
    `Authorization: Bearer <key>` (the detail Customer.io's reference leaves open; see the
    module)."""
    return BearerAuth(key)


def is_private_key(key: str) -> bool:
    """A Customer.io private key (`sk_...`)."""
    return key.startswith(PRIVATE_KEY_PREFIX)


def track_auth(site_id: str, api_key: str) -> tuple[httpx.Auth, tuple[str, ...]]:
    """The Track API's auth, and the config keys an error about it names."""
    if is_private_key(api_key):
        return private_key_auth(api_key), ("api_key",)
    return httpx.BasicAuth(site_id, api_key), ("site_id", "api_key")


def app_auth(key: str) -> httpx.Auth:
    """The App API's auth: `app_api_key` as a bearer token (documented), or the private key as
    `private_key_auth` sends it."""
    return private_key_auth(key) if is_private_key(key) else BearerAuth(key)


def app_credential(api_key: str, app_api_key: str) -> tuple[str, str] | None:
    """The App API's key and the config key that holds it (the private key in `api_key`, else
    `app_api_key`), or None when the config has neither: no transactional sends."""
    if is_private_key(api_key):
        return api_key, "api_key"
    if app_api_key:
        return app_api_key, "app_api_key"
    return None


def credential_problem(site_id: str, api_key: str, app_api_key: str) -> str | None:
    """What is wrong with a config's credentials ("" is a key not set), or None.

    The message names keys, never a value."""
    keys = "destination.customerio."
    if not api_key:
        return (
            f"{keys}api_key is not set: set it to a private key (sk_...) alone, or to a Track API"
            f" key with {keys}site_id"
        )
    if PUBLIC_KEY_PREFIX in (api_key[:3], app_api_key[:3]):
        return (
            "a public Customer.io key (pk_...) is for browsers and mobile apps and cannot send"
            f" messages or delete people: set {keys}api_key to a private key (sk_...)"
        )
    if is_private_key(api_key):
        mixed = [
            key for key, value in (("site_id", site_id), ("app_api_key", app_api_key)) if value
        ]
        if mixed:
            return (
                f"{keys}api_key is a private key (sk_...), which works alone for every API: remove"
                f" {' and '.join(keys + key for key in mixed)} (a private key and the older"
                " site id / App API key pair cannot be mixed)"
            )
        return None
    if is_private_key(app_api_key):
        return (
            f"{keys}app_api_key is a private key (sk_...): set it as {keys}api_key alone and"
            f" remove {keys}site_id and {keys}app_api_key (a private key and the older site id"
            " / Track API key pair cannot be mixed)"
        )
    if not site_id:
        return (
            f"{keys}site_id is not set: a Track API key needs its site id (or set {keys}api_key"
            " to a private key, sk_..., alone)"
        )
    return None
