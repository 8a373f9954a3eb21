"""The chat page at / in a real browser: Debian's chromium, headless, driven by selenium, against real
servers on the real SmolLM2 (one without a key, one with --api-key). A message typed in streams a reply
into the page, the stop button ends a reply mid-stream (and the server frees it), settings reach the
request, the conversation stays in the tab, model output never becomes HTML, a wrong key is shown as
an error. The page's headers (CSP, nothing fetched from elsewhere) are checked without a browser.

Skipped, with the reason, where chromium, chromedriver or selenium is missing (scripts/test.sh
installs them). A screenshot of the chat is kept in build/test-artifacts/ (SYSINFER_TEST_ARTIFACTS)."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

from support.servers import start_server

API_KEY = "web-ui-test-key"
ARTIFACTS = Path(os.environ.get("SYSINFER_TEST_ARTIFACTS", Path(__file__).resolve().parents[2] / "build" /
                                "test-artifacts"))


@pytest.fixture(scope="module")
def server():
    proc, base, _ = start_server()
    yield base
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def keyed_server():
    proc, base, _ = start_server(SYSINFER_API_KEY=API_KEY)
    yield base
    proc.kill()
    proc.wait()


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
    except ImportError:
        pytest.skip("selenium is not installed (pip install selenium; scripts/test.sh installs it)")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("chromium and chromedriver are not installed (apt-get install chromium chromium-driver; "
                    "scripts/test.sh installs them when run as root)")
    options = webdriver.ChromeOptions()
    options.binary_location = binary  # given, with the driver's path: selenium-manager never goes online
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1000,800", "--lang=en-US", "--no-first-run", "--disable-extensions"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver_path))
    driver.set_script_timeout(30)
    yield driver
    driver.quit()


# ---------------------------------------------------------------- helpers

def wait_for(driver, script: str, timeout: float = 60, *args):
    """Polls a JS expression (`return ...`) until it is truthy; returns its value."""
    deadline = time.time() + timeout
    while True:
        value = driver.execute_script(script, *args)
        if value:
            return value
        assert time.time() < deadline, f"timed out waiting for: {script}"
        time.sleep(0.05)


def open_page(driver, base: str) -> None:
    driver.get(base + "/")
    driver.execute_script("sessionStorage.clear(); localStorage.clear();")
    driver.get(base + "/")
    wait_for(driver, "return document.getElementById('status').dataset.state === 'ready'")


def set_field(driver, element_id: str, value: str) -> None:
    """Types into a settings field as a user does (the page saves on change)."""
    driver.execute_script("document.getElementById('settings').open = true")
    el = driver.find_element("id", element_id)
    el.clear()
    el.send_keys(value)
    driver.execute_script("arguments[0].dispatchEvent(new Event('change'))", el)


def record_requests(driver) -> None:
    """Wraps fetch to keep the body of every chat request the page sends (window.__sent)."""
    driver.execute_script("""
        window.__sent = [];
        const real = window.fetch;
        window.fetch = function (url, init) {
          if (String(url).includes('chat/completions')) window.__sent.push(JSON.parse(init.body));
          return real.apply(this, arguments);
        };""")


def watch_reply(driver) -> None:
    """Records the length of the newest reply's text at each change of the log (window.__lengths)."""
    driver.execute_script("""
        window.__lengths = [];
        new MutationObserver(() => {
          const replies = document.querySelectorAll('.msg.assistant .text');
          if (replies.length) window.__lengths.push(replies[replies.length - 1].textContent.length);
        }).observe(document.getElementById('log'), {subtree: true, childList: true, characterData: true});""")


def send_message(driver, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = driver.find_element("id", "input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


def last(driver, selector: str) -> dict:
    return driver.execute_script("""
        const all = document.querySelectorAll(arguments[0]);
        const el = all[all.length - 1];
        return el ? {text: el.querySelector('.text').textContent, state: el.dataset.state || null,
                     meta: el.querySelector('.meta').textContent, count: all.length} : null;""", selector)


def wait_reply_done(driver, n_replies: int, timeout: float = 90) -> dict:
    wait_for(driver, "const r = document.querySelectorAll('.msg.assistant');"
                     "return r.length >= arguments[0] && r[arguments[0] - 1].dataset.state !== 'streaming'",
             timeout, n_replies)
    return last(driver, ".msg.assistant")


def running_requests(base: str) -> float:
    metrics = httpx.get(base + "/metrics", timeout=10).text
    return float(re.search(r"^sysinfer_num_requests_running (\S+)$", metrics, re.M).group(1))


def csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser") if "Content Security Policy" in e["message"]]


# ---------------------------------------------------------------- without a browser

def test_page_is_one_self_contained_file_with_a_strict_policy(keyed_server):
    """Served without the key (the page holds no data), nothing loaded from elsewhere, and a CSP that
    allows only its own inline script and style (by hash) and connections back to this server."""
    r = httpx.get(keyed_server + "/", timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    html = r.text
    csp = dict(part.strip().split(" ", 1) for part in r.headers["content-security-policy"].split(";"))
    assert csp["default-src"] == "'none'" and csp["connect-src"] == "'self'"
    assert csp["frame-ancestors"] == "'none'" and csp["form-action"] == "'none'" and csp["base-uri"] == "'none'"
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", csp["script-src"]), csp["script-src"]
    assert re.fullmatch(r"'sha256-[A-Za-z0-9+/]{43}='", csp["style-src"]), csp["style-src"]
    assert "unsafe" not in r.headers["content-security-policy"]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["referrer-policy"] == "no-referrer"
    # no CDN, no other site: every src/href is local or data:, and no absolute URL appears in the code
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']*)["']""", html)
    assert refs == ["data:,"], refs
    assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", html, re.I)
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html and "document.write" not in html
    # the API itself still needs the key
    assert httpx.get(keyed_server + "/v1/models", timeout=10).status_code == 401


# ---------------------------------------------------------------- in the browser

def test_a_typed_message_streams_a_reply_with_the_settings_sent(browser, server):
    open_page(browser, server)
    assert browser.find_element("id", "key-prompt").is_displayed() is False  # no key on this server
    assert "SmolLM2" in browser.find_element("id", "model").text
    set_field(browser, "system", "You are a helpful assistant. Answer briefly.")
    set_field(browser, "temperature", "0")
    set_field(browser, "max-tokens", "64")
    record_requests(browser)
    watch_reply(browser)

    send_message(browser, "Name three colors.")
    reply = wait_reply_done(browser, 1)
    assert reply["state"] == "done" and reply["text"].strip(), reply
    lengths = browser.execute_script("return window.__lengths")
    # the text was on the page in part before the whole reply was: at least one shorter, non-empty
    # length was seen. (How many depends on how the browser batches its updates and on how many
    # tokens each step yields with speculation on, so one is all that can be asked.)
    partial = [n for n in lengths if 0 < n < len(reply["text"])]
    assert partial, lengths
    assert re.match(r"\d+ tokens", reply["meta"]), reply["meta"]
    sent = browser.execute_script("return window.__sent")[0]
    assert sent["stream"] is True and sent["temperature"] == 0 and sent["max_tokens"] == 64
    assert sent["messages"] == [{"role": "system", "content": "You are a helpful assistant. Answer briefly."},
                                {"role": "user", "content": "Name three colors."}]

    # a second turn, typed in Chinese: the whole conversation (kept in the page) goes with it
    send_message(browser, "请用中文说你好。")
    reply2 = wait_reply_done(browser, 2)
    assert reply2["state"] == "done" and reply2["text"].strip()
    assert last(browser, ".msg.user")["text"] == "请用中文说你好。"
    sent2 = browser.execute_script("return window.__sent")[1]
    assert [m["role"] for m in sent2["messages"]] == ["system", "user", "assistant", "user"]
    assert sent2["messages"][3]["content"] == "请用中文说你好。"
    assert sent2["messages"][2]["content"].strip()

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "web-ui-chat.png"
    assert browser.save_screenshot(str(shot)) and shot.stat().st_size > 10_000

    # the conversation survives a reload of the tab, and "New chat" forgets it
    browser.refresh()
    wait_for(browser, "return document.getElementById('status').dataset.state === 'ready'")
    assert browser.execute_script("return document.querySelectorAll('.msg.user').length") == 2
    browser.find_element("id", "new-chat").click()
    assert browser.execute_script("return document.querySelectorAll('.msg').length") == 0
    assert json.loads(browser.execute_script("return sessionStorage.getItem('sysinfer.chat')")) == []
    assert not csp_violations(browser)


def test_stop_ends_the_reply_mid_stream_and_the_server_frees_it(browser, server):
    open_page(browser, server)
    set_field(browser, "max-tokens", "1500")
    set_field(browser, "temperature", "0")
    send_message(browser, "Count from 1 to 500, one number per line.")
    wait_for(browser, "const r = document.querySelector('.msg.assistant');"
                      "return r && r.dataset.state === 'streaming' && r.querySelector('.text').textContent.length > 20")
    assert running_requests(server) == 1
    browser.find_element("id", "stop").click()
    wait_for(browser, "return document.querySelector('.msg.assistant').dataset.state === 'stopped'", 5)
    stopped = last(browser, ".msg.assistant")
    assert stopped["meta"] == "stopped" and stopped["text"]
    kept = json.loads(browser.execute_script("return sessionStorage.getItem('sysinfer.chat')"))
    assert [m["role"] for m in kept] == ["user", "assistant"] and kept[1]["content"].strip()
    assert browser.find_element("id", "send").is_displayed() and not browser.find_element("id", "stop").is_displayed()
    deadline = time.time() + 10  # the dropped connection aborts the request: its slot and blocks are freed
    while running_requests(server) != 0:
        assert time.time() < deadline, "the stopped request is still running"
        time.sleep(0.1)
    time.sleep(0.5)
    assert last(browser, ".msg.assistant")["text"] == stopped["text"]  # nothing more arrived
    # the partial reply is part of the conversation: the next request carries it
    record_requests(browser)
    set_field(browser, "max-tokens", "8")
    send_message(browser, "Thanks.")
    wait_reply_done(browser, 2)
    sent = browser.execute_script("return window.__sent")[0]
    assert [m["role"] for m in sent["messages"]] == ["user", "assistant", "user"]
    assert sent["messages"][1]["content"] == kept[1]["content"]


def test_model_output_is_never_html(browser, server):
    """A reply with HTML in it, streamed through the page's own reader (fetch answered in the page with
    the server's SSE framing, events and a Chinese character split across network chunks): the HTML
    shows as text, markdown becomes elements, no script runs. Then the user's own HTML, sent for real."""
    open_page(browser, server)
    browser.execute_script(r"""
        const enc = new TextEncoder();
        const event = (content, finish) => 'data: ' + JSON.stringify({choices: [{index: 0,
            delta: content === null ? {role: 'assistant', content: ''} : {content}, finish_reason: finish}]}) + '\n\n';
        const body = enc.encode(event(null, null) + event('<img src=x onerror="window.__pwned=1">\n\n', null)
            + event('**bold** and `<b>code</b>` 你好\n```\n<script>window.__pwned=2</script>\n```\n', null)
            + event('- item <i>one</i>\n- item two', 'stop')
            + 'data: ' + JSON.stringify({choices: [], usage: {prompt_tokens: 5, completion_tokens: 7, total_tokens: 12}})
            + '\n\ndata: [DONE]\n\n');
        const cuts = [0, 7, 60, body.indexOf(0xe4) + 1, body.length - 9, body.length];  // mid-event, mid-character (你)
        window.fetch = async (url) => {
          if (!String(url).includes('chat/completions')) throw new Error('unexpected ' + url);
          const pieces = cuts.slice(1).map((end, i) => body.slice(cuts[i], end));
          return new Response(new ReadableStream({start(c) { for (const p of pieces) c.enqueue(p); c.close(); }}),
                              {status: 200, headers: {'Content-Type': 'text/event-stream'}});
        };""")
    send_message(browser, "anything")
    reply = wait_reply_done(browser, 1, 10)
    assert reply["state"] == "done", reply
    found = browser.execute_script("""
        const t = document.querySelectorAll('.msg.assistant .text');
        const r = t[t.length - 1];
        return {img: r.querySelectorAll('img, script, b, i').length, strong: [...r.querySelectorAll('strong')].map(e => e.textContent),
                code: [...r.querySelectorAll(':not(pre) > code')].map(e => e.textContent),
                pre: [...r.querySelectorAll('pre code')].map(e => e.textContent),
                li: [...r.querySelectorAll('ul > li')].map(e => e.textContent), pwned: window.__pwned || null};""")
    assert found == {"img": 0, "strong": ["bold"], "code": ["<b>code</b>"],
                     "pre": ["<script>window.__pwned=2</script>"], "li": ["item <i>one</i>", "item two"],
                     "pwned": None}, found
    assert '<img src=x onerror="window.__pwned=1">' in reply["text"] and "你好" in reply["text"]
    assert reply["meta"].startswith("7 tokens")

    browser.get(server + "/")  # the real fetch again
    wait_for(browser, "return document.getElementById('status').dataset.state === 'ready'")
    set_field(browser, "max-tokens", "4")
    send_message(browser, '<img src=x onerror="window.__pwned=3"><b>hi</b>')
    wait_reply_done(browser, 1)
    assert last(browser, ".msg.user")["text"] == '<img src=x onerror="window.__pwned=3"><b>hi</b>'
    assert browser.execute_script("return document.querySelectorAll('#log img, #log b').length") == 0
    assert browser.execute_script("return window.__pwned || null") is None
    assert not csp_violations(browser)


def test_reasoning_shows_collapsed_above_the_answer(browser, server):
    """A thinking model's stream (reasoning_content deltas, then content), answered in the page: the
    thinking is in a collapsed block above the answer, as text, and kept with the turn for the next request."""
    open_page(browser, server)
    browser.execute_script(r"""
        const event = (delta, finish) => 'data: ' + JSON.stringify({choices: [{index: 0, delta, finish_reason: finish}]}) + '\n\n';
        const body = new TextEncoder().encode(event({role: 'assistant', content: ''}, null)
            + event({reasoning_content: 'The user asks about <b>Paris</b>.'}, null) + event({reasoning_content: ' Easy.'}, null)
            + event({content: 'Paris is the capital.'}, 'stop') + 'data: [DONE]\n\n');
        window.fetch = async (url) => new Response(new ReadableStream({start(c) { c.enqueue(body); c.close(); }}),
                                                   {status: 200, headers: {'Content-Type': 'text/event-stream'}});""")
    send_message(browser, "Capital of France?")
    reply = wait_reply_done(browser, 1, 10)
    assert reply["text"] == "Paris is the capital."
    found = browser.execute_script("""
        const m = document.querySelector('.msg.assistant'), d = m.querySelector('details.reasoning');
        return {hidden: d.hidden, open: d.open, thought: d.querySelector('.thought').textContent,
                html: d.querySelectorAll('b').length, above: d.compareDocumentPosition(m.querySelector('.text')) === 4,
                kept: JSON.parse(sessionStorage.getItem(Object.keys(sessionStorage).find(k => k.includes('chat'))))};""")
    assert found["thought"] == "The user asks about <b>Paris</b>. Easy." and found["html"] == 0
    assert not found["hidden"] and not found["open"] and found["above"]
    assert found["kept"][-1] == {"role": "assistant", "content": "Paris is the capital.",
                                 "reasoning_content": "The user asks about <b>Paris</b>. Easy."}
    assert not csp_violations(browser)


def test_enter_while_an_input_method_composes_does_not_send(browser, server):
    """Chinese input: Enter picks the IME's candidate; only a plain Enter sends."""
    open_page(browser, server)
    browser.find_element("id", "input").send_keys("你好")
    browser.execute_script("document.getElementById('input').dispatchEvent(new KeyboardEvent('keydown', "
                           "{key: 'Enter', isComposing: true, bubbles: true, cancelable: true}))")
    time.sleep(0.3)
    assert browser.execute_script("return document.querySelectorAll('.msg').length") == 0
    assert browser.find_element("id", "input").get_attribute("value") == "你好"


def test_server_errors_are_shown_and_the_text_kept(browser, server):
    open_page(browser, server)
    set_field(browser, "temperature", "5")
    send_message(browser, "Hello there")
    wait_for(browser, "return document.querySelector('.msg.error')", 10)
    error = last(browser, ".msg.error")["text"]
    assert "temperature" in error and "2" in error, error
    assert browser.execute_script("return document.querySelectorAll('.msg.user, .msg.assistant').length") == 0
    assert browser.find_element("id", "input").get_attribute("value") == "Hello there"  # ready to send again


def test_a_server_with_a_key_asks_for_it_and_shows_a_wrong_one(browser, keyed_server):
    browser.get(keyed_server + "/")
    browser.execute_script("sessionStorage.clear(); localStorage.clear();")
    browser.get(keyed_server + "/")
    wait_for(browser, "return !document.getElementById('key-prompt').hidden")
    assert browser.find_element("id", "key-error").is_displayed() is False  # no key tried yet: no error

    browser.find_element("id", "key-input").send_keys("wrong-key\n")
    error = wait_for(browser, "const e = document.getElementById('key-error'); return !e.hidden && e.textContent")
    assert "invalid or missing API key" in error
    send_message(browser, "Hello")  # a chat request with the wrong key: the server's message, the text kept
    wait_for(browser, "return document.querySelector('.msg.error')", 10)
    assert "invalid or missing API key" in last(browser, ".msg.error")["text"]
    assert browser.find_element("id", "input").get_attribute("value") == "Hello"

    browser.find_element("id", "key-input").send_keys(API_KEY + "\n")
    wait_for(browser, "return document.getElementById('key-prompt').hidden")
    assert "SmolLM2" in browser.find_element("id", "model").text
    set_field(browser, "max-tokens", "8")
    browser.find_element("id", "input").clear()
    send_message(browser, "Hello")
    reply = wait_reply_done(browser, 1)
    assert reply["state"] == "done" and reply["text"].strip()
    assert browser.execute_script("return sessionStorage.getItem('sysinfer.key')") == json.dumps(API_KEY)
    assert browser.execute_script("return localStorage.getItem('sysinfer.key')") is None  # not kept past the tab
