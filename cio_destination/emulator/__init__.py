"""A local stand-in for Customer.io, for demos, tests and trying a mapping.

What it emulates
----------------
* Track API v2: ``POST /api/v2/batch`` and ``POST /api/v2/entity`` with Customer.io's validation
  (identifier, attribute, event and entry limits), its status codes (``200``, ``207`` naming the
  invalid ``batch_index`` entries while applying the rest, ``400`` applying nothing, ``401``) and
  the 500,000-byte batch / 32,000-byte entry limits.
* Track API v1: ``PUT``/``DELETE /api/v1/customers/{identifier}`` and
  ``POST /api/v1/customers/{identifier}/events`` (an identifier containing ``@`` is an email).
* ``GET /api/v1/accounts/region`` and the App API's ``POST /v1/send/email``.
* Auth: HTTP Basic ``site_id:api_key`` on the Track API, ``Bearer <app_api_key>`` on the App
  API, and, with ``private_key`` (``--private-key``), ``Bearer <private key>`` on both.
* State: people (attribute merge where ``""``/``null`` removes; an ``email`` attribute also sets
  the email identifier), event de-duplication by ULID ``id`` (case-insensitive) across v1 and v2,
  suppression (the profile is deleted and later operations naming its ``id``, ``email`` or the
  suppressed identifier are ignored until unsuppressed), merge, devices, objects and
  relationships, transactional deliveries.  An identify whose ``timestamp`` is older than the
  newest one already applied to that person is dropped while the call still answers 200, as
  Customer.io may do; see :attr:`Emulator.stale_identifies`.
* Faults (:class:`Faults`): latency, a sliding-window rate limit answered ``429`` with
  ``Retry-After``, random ``429``/``500``/``503``, dropped connections and lost responses.
* Inspection without auth under ``/_emulator/`` (``state``, ``people``, ``events``,
  ``deliveries``, ``objects``, ``relationships``, ``suppressions``, ``requests``, ``faults``,
  ``reset``).

What it does not emulate
------------------------
Segments, campaigns, message rendering or sending, the asynchronous processing delay and
error reporting of the real service, workspace settings (email and phone are always accepted
as identifiers), anonymous people (``anonymous_id``), the Data Pipelines API, other App API
endpoints, regions other than as a label, and any persistence: state lives in memory.

Run it standalone with ``python -m cio_destination.emulator --help``.
"""

from __future__ import annotations

from ._emulator import Emulator
from ._faults import Faults
from ._server import RequestRecord
from ._validate import MAX_BATCH_BYTES, MAX_ENTRY_BYTES

__all__ = ["MAX_BATCH_BYTES", "MAX_ENTRY_BYTES", "Emulator", "Faults", "RequestRecord"]
