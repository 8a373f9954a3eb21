#!/usr/bin/env python3
"""sysinfer-healthcheck: exit 0 when GET /health on this container's port answers 200 (model loaded,
engine running, not draining), else 1. Standard library only; the image's HEALTHCHECK runs it."""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("SYSINFER_PORT", "7860")
    url = f"http://127.0.0.1:{port}/health"
    try:
        with urllib.request.urlopen(url, timeout=4) as r:
            print(r.read(200).decode(errors="replace"))
            return 0 if r.status == 200 else 1
    except urllib.error.HTTPError as e:  # 503: loading, draining, failed
        print(f"{e.code}: {e.read(200).decode(errors='replace')}")
    except OSError as e:
        print(f"{url}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
