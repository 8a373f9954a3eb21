"""Thread count and CPU pinning: --threads, OMP_NUM_THREADS, GOMP_CPU_AFFINITY."""

from __future__ import annotations

import pytest

from sysinfer.threads import allowed_cpus, parse_cpu_list, resolve_threads


def test_parse_reference_deployment_affinity():
    cpus = parse_cpu_list("0-21,24-45,48-69,72-93")
    assert len(cpus) == 88 and cpus[:3] == [0, 1, 2] and 22 not in cpus and cpus[-1] == 93


def test_parse_gomp_syntax_with_stride_and_spaces():
    assert parse_cpu_list("0 3 1-2 4-10:3") == [0, 3, 1, 2, 4, 7, 10]
    with pytest.raises(ValueError):
        parse_cpu_list("5-2")


def test_precedence():
    allowed = allowed_cpus()
    assert resolve_threads(None, {}) == (len(allowed), allowed)
    assert resolve_threads(None, {"OMP_NUM_THREADS": "1"})[0] == 1
    assert resolve_threads(3, {"OMP_NUM_THREADS": "1"})[0] == 3
    n, cpus = resolve_threads(None, {"GOMP_CPU_AFFINITY": f"{allowed[-1]}"})
    assert cpus == [allowed[-1]] and n == 1
    # CPUs this process may not use are dropped rather than failing the pin.
    assert resolve_threads(None, {"GOMP_CPU_AFFINITY": "100000"})[1] == allowed


def test_bad_values_are_clear_errors():
    with pytest.raises(ValueError, match="OMP_NUM_THREADS"):
        resolve_threads(None, {"OMP_NUM_THREADS": "lots"})
    with pytest.raises(ValueError, match="GOMP_CPU_AFFINITY"):
        resolve_threads(None, {"GOMP_CPU_AFFINITY": "a-b"})
    with pytest.raises(ValueError, match="at least 1"):
        resolve_threads(0, {})


def test_native_pool_is_pinned(load):
    from support.model_files import tiny_model

    model = load(tiny_model("llama"), threads=2)
    assert model.n_threads == 2
    assert set(model.native.pinned_cpus) <= set(allowed_cpus())
