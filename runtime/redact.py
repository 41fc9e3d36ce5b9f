"""Secrets out of messages: DSNs and broker URLs are printed with `***` for the password.

Every error or log line that names a `postgresql://`, `mqtt://` or RPC URL passes it through
`redact_url`; `redact_text` does the same for every URL inside a longer message (an exception's
text). Query parameters that look like credentials (api-key, token, password, secret) are masked too.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
_SECRET_PARAM = re.compile(r"(pass|secret|token|key|auth|sig)", re.IGNORECASE)
#: scheme://user:password@ — the password ends at the last '@' before the host.
_USERINFO = re.compile(r"(?P<head>\b[a-zA-Z][a-zA-Z0-9+.-]*://[^\s:/@]*):(?P<password>[^\s@/]*)@")
_QUERY_SECRET = re.compile(r"(?P<name>[?&][^=&\s]*(?:pass|secret|token|key|auth|sig)[^=&\s]*)=(?P<value>[^&\s]*)",
                           re.IGNORECASE)


def redact_url(url: str) -> str:
    """`url` with its password (and credential-like query values) replaced by ***; other text as is."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            userinfo, _, hostport = netloc.rpartition("@")
            user, sep, _password = userinfo.partition(":")
            netloc = f"{user}{':' + MASK if sep else ''}@{hostport}"
        query = parts.query
        if query:
            query = urlencode([(k, MASK if _SECRET_PARAM.search(k) else v) for k, v in parse_qsl(query, True)],
                              safe="*")
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    except ValueError:
        return redact_text(url)


def redact_text(text: str) -> str:
    """Every URL password and credential-like query value in `text` replaced by ***."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY_SECRET.sub(lambda m: f"{m['name']}={MASK}", text)
