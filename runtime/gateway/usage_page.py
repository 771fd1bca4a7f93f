"""``GET /usage``: the usage web page, ``static/usage.html``, with its script
and stylesheet under ``/usage/static/``.

The page holds no data and no secret: its script fetches ``GET /v1/usage``
with the caller's key, so the gateway can serve these paths without auth
(``PUBLIC_PATHS``) while the report itself stays behind it.
"""
from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
PAGE_PATH = "/usage"
STATIC_PREFIX = "/usage/static"
STATIC_FILES = ("usage.html", "usage.js", "usage.css")
PUBLIC_PATHS = frozenset({PAGE_PATH, *(f"{STATIC_PREFIX}/{name}" for name in STATIC_FILES)})

# read at import, so that serving the page never touches the disk on the event loop
_HTML = (STATIC_DIR / "usage.html").read_text(encoding="utf-8")
_HEADERS = {
    "Cache-Control": "no-cache",
    # the key may arrive as ?key=: never send the page's address elsewhere
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self';"
                               " connect-src 'self'; img-src 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
}


async def usage_page(request: web.Request) -> web.Response:
    """The usage page (HTML); it loads its data from ``/v1/usage``."""
    return web.Response(text=_HTML, content_type="text/html", headers=_HEADERS)
