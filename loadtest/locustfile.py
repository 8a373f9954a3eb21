"""Load scenarios for a running sysinfer server (streaming chat, as EulerCopilot calls it).

    locust -f loadtest/locustfile.py --host http://127.0.0.1:7860 --headless -u 8 -r 2 -t 60s

Users: ShortChat (short questions), SharedSystemPrompt (a 1,500+ token RAG-style system prompt that
every request repeats: the prefix cache computes it once), LongOutput (long answers). Pick some with
class names on the command line. Time to first token and inter-token latency are recorded as their
own entries ("TTFT", "ITL") beside the HTTP request stats. Set SYSINFER_API_KEY if the server wants one;
LOCUST_MAX_TOKENS caps the reply length (default 64).
"""

from __future__ import annotations

import json
import os
import random
import time

from locust import HttpUser, between, events, task

API_KEY = os.environ.get("SYSINFER_API_KEY", "none")
MAX_TOKENS = int(os.environ.get("LOCUST_MAX_TOKENS", "64"))
QUESTIONS = ["What is the capital of France?", "Explain paged attention in one sentence.", "Name three colors.",
             "What is openEuler?", "请用中文介绍一下鲲鹏处理器。", "Write a haiku about servers."]
# ~1,600 tokens of retrieved "documents", identical on every call.
KNOWLEDGE = " ".join(f"Document {i}: the deployment runs on node {i % 4} with {i * 3} cores and answers in "
                     f"Chinese and English, keeping the cache warm for repeated prompts." for i in range(48))
SYSTEM = "You are a support assistant. Answer only from these documents.\n" + KNOWLEDGE


def record(name: str, seconds: float, ok: bool = True, exc: Exception | None = None) -> None:
    events.request.fire(request_type="STREAM", name=name, response_time=seconds * 1000, response_length=0,
                        exception=None if ok else (exc or RuntimeError(name)), context={})


class StreamingChatUser(HttpUser):
    abstract = True
    wait_time = between(0.1, 0.5)
    max_tokens = MAX_TOKENS

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": random.choice(QUESTIONS)}]

    @task
    def chat(self) -> None:
        body = {"model": "sysinfer", "messages": self.messages(), "max_tokens": self.max_tokens, "stream": True,
                "stream_options": {"include_usage": True}, "temperature": 0.7}
        start = time.perf_counter()
        last = first = None
        with self.client.post("/v1/chat/completions", json=body, stream=True, catch_response=True,
                              headers={"Authorization": f"Bearer {API_KEY}"}, name="chat stream") as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}: {resp.text[:200]}")
                return
            done = False
            for line in resp.iter_lines():
                if not line or not line.startswith(b"data: "):
                    continue
                if line == b"data: [DONE]":
                    done = True
                    break
                chunk = json.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                        record("TTFT", now - start)
                    else:
                        record("ITL", now - last)
                    last = now
            if not done:
                resp.failure("stream ended without [DONE]")
            else:
                resp.success()


class ShortChat(StreamingChatUser):
    weight = 3


class SharedSystemPrompt(StreamingChatUser):
    weight = 1

    def messages(self) -> list[dict]:
        return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": random.choice(QUESTIONS)}]


class LongOutput(StreamingChatUser):
    weight = 1
    max_tokens = MAX_TOKENS * 4

    def messages(self) -> list[dict]:
        return [{"role": "user", "content": "Write a detailed essay about CPU inference servers."}]
