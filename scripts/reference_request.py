"""The deployment guide's request.py run to the end of its reply (no max_tokens: as long as the
context allows) against `sysinfer serve` with every default and `sysinfer-server MODEL -t 0.0 -n 4096`
(issue 13). Slow on 2 cores (minutes per reply); CI runs the first 64 deltas
(tests/e2e/test_reference_request.py). Usage: python scripts/reference_request.py [MODEL.gguf]"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from support.reference_request import run_request_script, start_cli_server


def main() -> int:
    if len(sys.argv) > 1:
        model = sys.argv[1]
    else:
        from support.model_files import smollm2_q4_0
        model = smollm2_q4_0()
    failures = 0
    for argv in (["sysinfer", "serve"], ["sysinfer-server", model, "-t", "0.0", "-n", "4096"]):
        proc, port = start_cli_server(argv)
        try:
            start = time.perf_counter()
            with tempfile.TemporaryDirectory() as work:
                code, lines, stderr = run_request_script(port, Path(work))
            ok = code == 0 and lines and "role='assistant'" in lines[0] and not stderr.strip()
            failures += not ok
            print(f"{' '.join(argv[:1] + argv[2:] if len(argv) > 2 else argv)}: exit {code}, {len(lines)} deltas, "
                  f"{time.perf_counter() - start:.0f} s, last: {lines[-1] if lines else None}"
                  + ("" if ok else f"\n  FAILED: {stderr[-1500:]}"), flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
