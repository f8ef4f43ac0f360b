"""The package's version: `cio_destination.__version__`, and the HTTP user agent's."""

from __future__ import annotations

__version__ = "0.1.0"
