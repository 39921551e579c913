"""Remove credentials from text before it is printed or written: `https://user:KEY@host/v1?api_key=KEY`.

Why: an API key embedded in `--base-url` (user info or a query parameter) was written to `cot_run.json` and
printed; then an endpoint that echoed the request's credential (a 401 body, a 400 quoting the headers) put the key,
base64-encoded inside `Authorization: Basic base64(user:key)`, into `cot_failures.jsonl` and stdout. So a secret is
removed in every encoding an echo may carry (`secret_forms`: literal, URL-encoded, base64 at any alignment; also
cut short), any `Basic`/`Bearer` credential is cut, and a secret registered once (`register_secret`, done by the teacher that holds
the key) is removed by every later `redact_urls` call. URL user info is never sent (`url_has_credentials`: the
teacher refuses such a URL).
"""

from __future__ import annotations

import base64
import re
import threading
from urllib.parse import quote, quote_plus, urlsplit

# scheme://user[:password]@  ->  scheme://***@
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^/\s@'\"]+)@")
# ?api_key=...&token=...  ->  ?api_key=***
_SECRET_PARAM = re.compile(
    r"(?P<name>[?&;](?:api[_-]?key|key|token|access[_-]?token|auth|authorization|password|passwd|pwd|secret|"
    r"client[_-]?secret|sig|signature|code)=)(?P<value>[^&;#\s'\"]+)",
    re.IGNORECASE,
)
# Authorization: Basic dXNlcjprZXk=  /  Bearer sk-...  ->  Basic ***  (an echoed header, even cut short)
_AUTH_SCHEME = re.compile(r"(?P<scheme>\b(?:Basic|Bearer)\s+)(?P<value>[A-Za-z0-9+/=._~\-]{4,})", re.IGNORECASE)

MIN_FORM = 4  # shorter fragments are not redacted (they would blank ordinary text)
FRAGMENT = 12  # a token sharing this many consecutive characters with a secret's form is a cut-short echo of it
_TOKEN = re.compile(r"[A-Za-z0-9+/=_%.~\-]{" + str(FRAGMENT) + ",}")
_REGISTERED: set[str] = set()
_LOCK = threading.Lock()


def _base64_inner(data: bytes, altchars: bytes | None) -> list[str]:
    """The base64 characters that depend only on `data`, for each of the 3 alignments it may have in a longer
    encoded string (e.g. the key inside `base64(user:key)` for any user)."""
    out = []
    for pad in range(3):
        enc = base64.b64encode(b"\0" * pad + data, altchars=altchars).decode("ascii")
        first = -(-8 * pad // 6)  # first character whose 6 bits all come from `data`
        last = (8 * (pad + len(data))) // 6  # one past the last such character
        out.append(enc[first:last])
    return out


def secret_forms(secret: str) -> list[str]:
    """Every string that may stand for `secret` in an echo: literal, URL-encoded, base64 (standard and URL-safe,
    any alignment), longest first."""
    if not secret:
        return []
    raw = secret.encode("utf-8")
    forms = {secret, quote(secret, safe=""), quote_plus(secret), quote(secret)}
    for alt in (None, b"-_"):
        forms.update(_base64_inner(raw, alt))
    return sorted((f for f in forms if len(f) >= MIN_FORM), key=len, reverse=True)


def register_secret(*secrets: str | None) -> None:
    """Remember secrets (an API key, URL user info) so that every later `redact_urls` removes them."""
    with _LOCK:
        _REGISTERED.update(s for s in secrets if s)


def url_has_credentials(url: str | None) -> bool:
    """True when `url` carries user info (`user:password@host`), which an HTTP client would send as Basic auth."""
    if not url:
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return "@" in url
    return parts.username is not None or parts.password is not None


def redact_urls(text: str, *secrets: str | None) -> str:
    """`text` with URL user info, secret-looking query parameters, Basic/Bearer credentials and the given or
    registered secrets (in every form of `secret_forms`) replaced by ***."""
    if not text:
        return text
    with _LOCK:
        known = [*_REGISTERED, *(s for s in secrets if s)]
    grams: set[str] = set()
    for secret in known:
        for form in secret_forms(secret):
            text = text.replace(form, "***")
            grams.update(form[i:i + FRAGMENT] for i in range(len(form) - FRAGMENT + 1))
    if grams:  # an echo cut short (a 400 quoting 26 of 32 characters) is still the secret
        text = _TOKEN.sub(lambda m: "***" if any(m.group(0)[i:i + FRAGMENT] in grams
                                                   for i in range(len(m.group(0)) - FRAGMENT + 1)) else m.group(0),
                          text)
    text = _USERINFO.sub(lambda m: f"{m.group('scheme')}***@", text)
    text = _SECRET_PARAM.sub(lambda m: f"{m.group('name')}***", text)
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group('scheme')}***", text)
    return text


__all__ = ["redact_urls", "register_secret", "secret_forms", "url_has_credentials"]
