"""The root of the cloud package's errors."""

from __future__ import annotations


class CloudError(Exception):
    """Root of the cloud's errors (ingest, minter, chain, admin); the message says what to do."""
