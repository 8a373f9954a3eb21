"""The chat page at `/`: one static file (chat.html, with its CSS and JS inline) shipped in the package.

It is served without the API key (it holds no data); its own calls to /v1 send the key the user
types in. The Content-Security-Policy allows exactly the page's own script and style (by their
SHA-256, computed once from the file), connections to this origin only and nothing else: no CDN,
no other site, no plug-ins, no framing."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from functools import lru_cache
from importlib.resources import files

from starlette.responses import Response

PAGE_FILE = "chat.html"


def _sha256_source(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def content_security_policy(html: str) -> str:
    """The page's policy: each inline <script> and <style> block allowed by its hash, nothing else."""
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    styles = re.findall(r"<style>(.*?)</style>", html, re.S)
    return "; ".join([
        "default-src 'none'",
        "script-src " + " ".join(map(_sha256_source, scripts)),
        "style-src " + " ".join(map(_sha256_source, styles)),
        "connect-src 'self'",    # the page's fetches: /health, /v1/models, /v1/chat/completions
        "img-src data:",         # the empty favicon (no request for /favicon.ico)
        "base-uri 'none'", "form-action 'none'", "frame-ancestors 'none'",
    ])


@lru_cache(maxsize=1)
def _page() -> tuple[bytes, dict[str, str]]:
    html = files(__package__).joinpath(PAGE_FILE).read_text(encoding="utf-8")
    headers = {
        "Content-Security-Policy": content_security_policy(html),
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",            # for browsers that predate frame-ancestors
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",          # a server upgrade shows the new page at once
    }
    return html.encode("utf-8"), headers


async def chat_page() -> Response:
    body, headers = _page()
    return Response(body, media_type="text/html; charset=utf-8", headers=headers)


def page_url(host: str, port: int) -> str:
    """Where a browser on this machine finds the page (every interface includes loopback)."""
    try:
        address = ipaddress.ip_address(host)
        if address.is_unspecified:
            host = "127.0.0.1" if address.version == 4 else "[::1]"
        elif address.version == 6:
            host = f"[{host}]"
    except ValueError:
        pass  # a name, such as localhost
    return f"http://{host}:{port}/"
