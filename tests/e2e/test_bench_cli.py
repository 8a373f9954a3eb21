"""`sysinfer bench` prints the length table and writes its JSON and plot."""

from __future__ import annotations

import json
import shutil
import subprocess

from support.model_files import tiny_model


def test_bench_table_json_and_plot(tmp_path):
    out = subprocess.run([shutil.which("sysinfer"), "bench", tiny_model("llama"), "--lengths", "8,32", "--threads", "2",
                          "--json", str(tmp_path / "b.json"), "--plot", str(tmp_path / "b.png")],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "read bandwidth" in lines[0] and lines[1].split()[0] == "L"
    assert [int(line.split()[0]) for line in lines[2:]] == [8, 32]
    data = json.loads((tmp_path / "b.json").read_text())
    assert data["read_bandwidth_gbs"] > 0 and [r["length"] for r in data["rows"]] == [8, 32]
    for row in data["rows"]:
        assert row["prompt_tokens"] + row["generated_tokens"] == row["length"]
        assert row["prefill_tok_s"] > 0 and row["decode_tok_s"] > 0 and 0 < row["roofline_fraction"]
    assert (tmp_path / "b.png").read_bytes()[:4] == b"\x89PNG"


def test_bench_rejects_bad_lengths():
    out = subprocess.run([shutil.which("sysinfer"), "bench", tiny_model("llama"), "--lengths", "1"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and "--lengths" in out.stderr
