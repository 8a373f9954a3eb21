"""How many compute threads to run and which CPUs they are pinned to.

Order of precedence: an explicit thread count (--threads), else OMP_NUM_THREADS, else every CPU this
process may use. GOMP_CPU_AFFINITY (as the reference deployment sets it, e.g. "0-21,24-45,48-69,72-93")
chooses the CPUs; threads are pinned to them in order.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("sysinfer.threads")


def parse_cpu_list(spec: str) -> list[int]:
    """CPU list in GOMP_CPU_AFFINITY syntax: "0 3 1-2 4-15:2" or "0-21,24-45"."""
    cpus: list[int] = []
    for item in spec.replace(",", " ").split():
        stride = 1
        if ":" in item:
            item, stride_text = item.split(":", 1)
            stride = int(stride_text)
        if "-" in item:
            lo, hi = (int(x) for x in item.split("-", 1))
        else:
            lo = hi = int(item)
        if lo < 0 or hi < lo or stride < 1:
            raise ValueError(f"bad CPU range {item!r}")
        cpus.extend(range(lo, hi + 1, stride))
    return cpus


def allowed_cpus() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def resolve_threads(threads: int | None = None, env: dict[str, str] | None = None,
                    allowed: list[int] | None = None) -> tuple[int, list[int]]:
    """(thread count, CPUs to pin to in order; empty list = don't pin). `allowed` overrides the
    process's affinity mask (tests)."""
    env = os.environ if env is None else env
    allowed = allowed_cpus() if allowed is None else sorted(allowed)
    cpus = allowed
    affinity = env.get("GOMP_CPU_AFFINITY", "").strip()
    if affinity:
        try:
            wanted = parse_cpu_list(affinity)
        except ValueError as e:
            raise ValueError(f"GOMP_CPU_AFFINITY={affinity!r}: {e}") from None
        usable = set(allowed)
        cpus = [c for c in wanted if c in usable]
        dropped = sorted(set(wanted) - usable)
        if not cpus:
            log.warning("GOMP_CPU_AFFINITY=%s names no CPU this process may use: using CPUs %s instead",
                        affinity, ",".join(map(str, allowed)))
            cpus = allowed
        elif dropped:
            log.warning("GOMP_CPU_AFFINITY=%s: CPUs %s are absent or not allowed here and are skipped",
                        affinity, ",".join(map(str, dropped)))
    if threads is None and env.get("OMP_NUM_THREADS", "").strip():
        try:
            threads = int(env["OMP_NUM_THREADS"].split(",")[0])
        except ValueError:
            raise ValueError(f"OMP_NUM_THREADS={env['OMP_NUM_THREADS']!r} is not a number") from None
    if threads is None:
        threads = len(cpus)
    if threads < 1:
        raise ValueError(f"thread count must be at least 1, got {threads}")
    return threads, cpus
