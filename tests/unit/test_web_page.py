"""The chat page's policy and the address printed at start-up (the page itself: tests/e2e/test_web_ui.py)."""

from __future__ import annotations

import base64
import hashlib

from sysinfer.server.web import content_security_policy, page_url


def test_policy_allows_each_inline_block_by_its_hash_and_nothing_else():
    html = "<style>p{}</style><p>x</p><script>run();</script><script>more();</script>"
    digest = lambda s: "'sha256-" + base64.b64encode(hashlib.sha256(s.encode()).digest()).decode() + "'"  # noqa: E731
    policy = dict(p.split(" ", 1) for p in content_security_policy(html).split("; "))
    assert policy["script-src"] == f"{digest('run();')} {digest('more();')}"
    assert policy["style-src"] == digest("p{}")
    assert policy["default-src"] == "'none'" and policy["connect-src"] == "'self'"


def test_page_url_for_the_listening_address():
    assert page_url("127.0.0.1", 7860) == "http://127.0.0.1:7860/"
    assert page_url("0.0.0.0", 7860) == "http://127.0.0.1:7860/"  # every interface: loopback is one
    assert page_url("::", 8000) == "http://[::1]:8000/"
    assert page_url("fe80::1", 80) == "http://[fe80::1]:80/"
    assert page_url("localhost", 1) == "http://localhost:1/"
