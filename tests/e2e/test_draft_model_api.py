"""`--draft-model` end to end: a server drafting with SmolLM2 for itself answers greedy requests with
the same text as a server without speculation, every draft accepted (usage and /metrics say so),
structured output included;
a client leaving mid-stream frees both models' KV blocks; seeded sampling is reproducible; a draft
that fails to load or a flag combination that can't work is a clear start-up error."""

from __future__ import annotations

import re
import subprocess
import sys
import time

import httpx
import openai
import pytest

from support.model_files import smollm2_q4_0, tiny_draft_model, tiny_model
from support.servers import start_server
from support.spec_prompts import DOCUMENT

QUESTION = DOCUMENT[:1200] + "\nWhat does section 2 of the handbook above say? Quote it."


@pytest.fixture(scope="module")
def servers():
    # the model drafts every step (SYSINFER_DRAFT_LOOKUP=false): SmolLM2 drafting for itself is always right
    # (SYSINFER_DRAFT_POLICY=always: a draft model as costly as the target would not pay, and the
    # default policy would rightly stop drafting with it)
    procs = {"draft": start_server(SYSINFER_DRAFT_MODEL=smollm2_q4_0(), SYSINFER_DRAFT_LOOKUP="false",
                                   SYSINFER_DRAFT_POLICY="always"),
             "off": start_server(SYSINFER_SPECULATIVE="off")}
    yield {mode: (openai.OpenAI(base_url=base + "/v1", api_key="x", max_retries=0), base)
           for mode, (_, base, _) in procs.items()}
    for proc, _, _ in procs.values():
        proc.terminate()
        proc.wait(timeout=30)


def _metrics(base: str) -> dict[str, float]:
    text = httpx.get(base + "/metrics").text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r"^(sysinfer_\w+) (\S+)$", text, re.M)}


def _chat(client, content=QUESTION, **kw):
    kw.setdefault("temperature", 0)
    return client.chat.completions.create(model="m", messages=[{"role": "user", "content": content}],
                                          max_tokens=kw.pop("max_tokens", 48), **kw)


def test_greedy_text_is_unchanged_and_every_draft_accepted(servers):
    (draft, base), (off, _) = servers["draft"], servers["off"]
    for content in (QUESTION, "Write a haiku about the sea.", "请用中文介绍一下北京。"):
        on, plain = _chat(draft, content), _chat(off, content)
        assert on.choices[0].message.content == plain.choices[0].message.content, content
        details = on.usage.completion_tokens_details
        assert details.accepted_prediction_tokens > 10 and details.rejected_prediction_tokens == 0, on.usage
    m = _metrics(base)
    assert m["sysinfer_accepted_draft_tokens_total"] == m["sysinfer_draft_tokens_total"] > 30
    assert m["sysinfer_draft_model_seconds"] > 0
    assert m["sysinfer_draft_kv_blocks_used"] == 0 and m["sysinfer_draft_kv_blocks_free"] > 2048 / 16


def test_a_client_leaving_mid_stream_frees_both_caches(servers):
    client, base = servers["draft"]
    stream = _chat(client, max_tokens=400, stream=True)
    for _, _chunk in zip(range(6), stream):
        pass
    stream.close()
    deadline = time.time() + 20
    while time.time() < deadline:
        m = _metrics(base)
        if m["sysinfer_running_sequences"] == 0 and m["sysinfer_draft_kv_blocks_used"] == 0:
            break
        time.sleep(0.1)
    assert m["sysinfer_running_sequences"] == 0 and m["sysinfer_kv_blocks_used"] == 0, m
    assert m["sysinfer_draft_kv_blocks_used"] == 0, m


def test_seeded_sampling_with_a_draft_model_is_reproducible(servers):
    client, _ = servers["draft"]
    a, b = (_chat(client, "Tell me a short story.", temperature=0.9, seed=5, max_tokens=40) for _ in range(2))
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.usage.completion_tokens_details.accepted_prediction_tokens > 0


def test_a_draft_model_that_fails_to_load_is_reported_at_start_up(tmp_path):
    with pytest.raises(RuntimeError, match="model failed to load: ModelLoadError: draft model: .*no such file"):
        start_server(SYSINFER_DRAFT_MODEL=str(tmp_path / "missing.gguf"))


def _cli(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sysinfer.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd)  # not the repository root: the installed build


def test_generate_with_a_draft_model(tmp_path):
    # --draft-policy always: drafting with a model as costly as the target does not pay, and by
    # default the engine stops doing it after a try (spec_policy.py)
    out = _cli("generate", smollm2_q4_0(), "--draft-model", smollm2_q4_0(), "--no-draft-lookup", "--chat", "-p",
               "Count from 1 to 10.", "-n", "16", "-v", "--ctx-size", "256", "--threads", "2",
               "--draft-policy", "always", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    accepted, drafted = map(int, re.search(r"drafts accepted (\d+)/(\d+)", out.stderr).groups())
    assert accepted == drafted > 5, out.stderr


@pytest.mark.parametrize("args, says", [
    (["generate", "--draft-model", "MISSING", "-p", "x"], "draft model: MISSING: no such file"),
    (["generate", "--draft-model", "OTHER", "-p", "x"], "token id 300 is '<renamed>' in the draft model"),
    (["generate", "--draft-model", "SAME", "--no-speculative", "-p", "x"],
     "draft_model needs speculative decoding: it is off (--no-speculative)"),
    (["serve", "--draft-model", "SAME", "--max-batch", "4"], "it is off at max_batch 4 unless --speculative is given"),
    (["serve", "--draft-model", "SAME", "--numa", "replicate"], "not supported with numa replicate"),
])
def test_clear_errors(tmp_path, args, says):
    names = {"MISSING": str(tmp_path / "missing.gguf"), "OTHER": tiny_draft_model("renamed"),
             "SAME": tiny_draft_model("same")}
    args = [names.get(a, a) for a in args]
    says = says.replace("MISSING", names["MISSING"])
    out = _cli(args[0], tiny_model("llama"), *args[1:], cwd=tmp_path)
    assert out.returncode == 2 and says in out.stderr, out.stderr
    assert "Traceback" not in out.stderr


def test_a_constrained_request_through_a_draft_model_server_drafts_within_its_grammar(servers):
    """Structured output drafts too: the draft model's draft ends before a token the grammar forbids;
    the reply is what the server without speculation gives, valid JSON, with drafts accepted."""
    import json

    (client, base), (off, _) = servers["draft"], servers["off"]
    kw = dict(max_tokens=60, response_format={"type": "json_object"})
    content = "Give a JSON object with the keys name and city for Margaret Hamilton of Boston."
    r, plain = _chat(client, content, **kw), _chat(off, content, **kw)
    assert r.choices[0].message.content == plain.choices[0].message.content
    assert r.choices[0].finish_reason == plain.choices[0].finish_reason
    if r.choices[0].finish_reason == "stop":
        json.loads(r.choices[0].message.content)
    assert r.usage.completion_tokens_details.accepted_prediction_tokens > 5, r.usage
    assert _metrics(base)["sysinfer_draft_kv_blocks_used"] == 0
