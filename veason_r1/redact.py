"""Remove credentials from text before it is printed or written: `https://user:KEY@host/v1?api_key=KEY`.

Why: an API key embedded in `--base-url` (user info or a query parameter) was written to `cot_run.json` and
printed. Every log line and file that may hold an endpoint URL goes through `redact_urls`.
"""

from __future__ import annotations

import re

# scheme://user[:password]@  ->  scheme://***@
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"]+)@")
# ?api_key=...&token=...  ->  ?api_key=***
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|passwd|pwd|secret|"
    r"client[_-]?secret|sig|signature|code)=)(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)


def redact_urls(text: str, *secrets: str | None) -> str:
    """`text` with URL user info, secret-looking query parameters and the given secret strings replaced by ***."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}***", text)
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


__all__ = ["redact_urls"]
