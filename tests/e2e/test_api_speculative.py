"""Speculative decoding through the HTTP API: on by default at max_batch 1, usage reports the drafted
tokens as OpenAI's accepted/rejected prediction tokens (both endpoints, streamed usage too), /metrics
counts them, and greedy text is the same as a server started with speculation off."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from support.servers import start_server
from support.spec_prompts import DOCUMENT

QUESTION = DOCUMENT[:1500] + "\nQuote section 2 of the handbook above word for word."


@pytest.fixture(scope="module")
def servers():
    # Every draft found is verified (SYSINFER_DRAFT_POLICY=always), so the counts below do not depend on
    # this machine's step timings (the default policy drafts only where that pays: spec_policy.py).
    procs = {mode: start_server(**({"SYSINFER_SPECULATIVE": "off"} if mode == "off" else
                                   {"SYSINFER_DRAFT_POLICY": "always"})) for mode in ("auto", "off")}
    yield {mode: openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0)
           for mode, (_, base, _) in procs.items()}, procs["auto"][1]
    for proc, _, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=30)


def _chat(client, **kw):
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=60, temperature=0, **kw)


def test_chat_usage_reports_predictions_and_text_is_unchanged(servers):
    clients, _ = servers
    on, off = _chat(clients["auto"]), _chat(clients["off"])
    assert on.choices[0].message.content == off.choices[0].message.content
    details = on.usage.completion_tokens_details
    assert details.accepted_prediction_tokens > 10, on.usage  # the answer quotes the prompt
    assert details.rejected_prediction_tokens >= 0
    assert off.usage.completion_tokens_details.accepted_prediction_tokens == 0
    assert off.usage.completion_tokens_details.rejected_prediction_tokens == 0
    assert on.usage.completion_tokens == off.usage.completion_tokens


def test_streamed_usage_reports_predictions(servers):
    clients, _ = servers
    chunks = list(_chat(clients["auto"], stream=True, stream_options={"include_usage": True}))
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage.completion_tokens_details.accepted_prediction_tokens > 10


def test_completions_usage_reports_predictions(servers):
    clients, _ = servers
    r = clients["auto"].completions.create(model="m", prompt=QUESTION + "\n\nSection 2. Installation.", max_tokens=40,
                                           temperature=0)
    details = r.usage.completion_tokens_details
    assert details.accepted_prediction_tokens + details.rejected_prediction_tokens > 0, r.usage


def test_metrics_count_drafts(servers):
    clients, base = servers
    _chat(clients["auto"])
    text = httpx.get(base + "/metrics").text
    values = {name: float(re.search(rf"^{name} (\S+)$", text, re.M).group(1))
              for name in ("sysinfer_draft_tokens_total", "sysinfer_accepted_draft_tokens_total",
                           "sysinfer_rejected_draft_tokens_total")}
    assert values["sysinfer_accepted_draft_tokens_total"] > 10
    assert values["sysinfer_draft_tokens_total"] == (values["sysinfer_accepted_draft_tokens_total"]
                                                     + values["sysinfer_rejected_draft_tokens_total"])
