"""Customer.io's documented Track API limits, checked locally before anything is sent.

Sizes are in bytes of UTF-8 / serialized JSON. "500 KB" and "32 KB" are taken as decimal kilobytes,
the stricter reading, so a body this destination builds is valid under either.
"""

from __future__ import annotations

MAX_REQUEST_BYTES = 500_000
MAX_ENTRY_BYTES = 32_000
MAX_IDENTIFIER_BYTES = 150
MAX_ATTRIBUTE_NAME_BYTES = 150
MAX_ATTRIBUTE_VALUE_BYTES = 1_000
MAX_ATTRIBUTES_PER_IDENTIFY = 300
MAX_EVENT_NAME_BYTES = 100
MAX_EVENT_DATA_BYTES = 100_000
MAX_OBJECT_DATA_BYTES = 100_000
