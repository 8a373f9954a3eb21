"""NUMA on a kernel that really has two nodes: a virtme-ng guest (qemu, software emulation) booted
with `--numa 2G,cpus=0 --numa 2G,cpus=1` over this machine's own filesystem.

test_two_node_kernel (the host side) boots the guest and runs this file's `inside` tests in it.
Those run wherever the kernel shows at least two NUMA nodes with CPUs and memory (the guest, or a
real multi-socket server) and skip elsewhere; with SYSINFER_NUMA_VM=1 (set by the host side) they
fail instead of skipping, so a guest that came up with one node is an error, not a silent pass.

What they hold: the topology read from the real sysfs, tensor parallel over the two real nodes
giving the same greedy tokens as one node, and move_pages(2) over every page of each node's weight
slices and KV arenas finding them on that node. scripts/numa_vm.sh runs the same from a shell.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sysinfer.topology import detect_topology, read_os_nodes

VM_TIMEOUT = 900  # seconds: boot (~30-50 s) and the tests under software emulation, with room for a loaded host
# The tiny models run in the guest: by default llama (GQA, Q6_K output; about 15 s of the guest's
# time) and the K-quant MoE (its experts' gate/up rows and down rows on each node; a few seconds),
# scripts/numa_vm.sh the kinds it is given (baichuan-alibi alone costs about 60 s under emulation).
VM_KINDS = tuple(k for k in os.environ.get("SYSINFER_NUMA_VM_KINDS", "llama,qwen3moe-kquants").split(",") if k)


def _real_nodes():
    return [n for n in read_os_nodes() if n.cpus and n.mem_bytes > 0]


def _require_two_nodes():
    if len(_real_nodes()) >= 2:
        return
    reason = f"needs a kernel with at least 2 NUMA nodes with CPUs and memory (this one: {len(_real_nodes())})"
    if os.environ.get("SYSINFER_NUMA_VM") == "1":
        pytest.fail("inside the NUMA guest, but " + reason)
    pytest.skip(reason)


# ---- inside the guest (or on a real multi-node machine) ----

def test_inside_topology_from_real_sysfs():
    _require_two_nodes()
    t = detect_topology(threads=2, numa="auto", env={})
    assert t.mode == "tp" and len(t.nodes) == 2, t.describe()
    for node in t.nodes:
        assert node.mem_node is not None and set(node.os_nodes) == {node.mem_node}, t.describe()
    assert t.nodes[0].mem_node != t.nodes[1].mem_node


def _load(kind: str, numa: str):
    from support.model_files import tiny_model

    from sysinfer.model.native_model import load_model

    return load_model(tiny_model(kind), threads=2, numa=numa, n_ctx=256, kv_blocks=16)


@pytest.mark.parametrize("kind", VM_KINDS)
def test_inside_tp_over_real_nodes(kind):
    _require_two_nodes()
    from test_forward import native_greedy, prompt_tokens

    one, split = _load(kind, "off"), _load(kind, "tp")
    assert one.n_nodes == 1 and split.n_nodes == 2
    prompt = prompt_tokens(one.n_vocab)
    assert native_greedy(split, prompt, 16) == native_greedy(one, prompt, 16)
    report, pages = split.node_report(), split.native.page_report()
    mem_nodes = [n.mem_node for n in split.topology.nodes]
    assert len(set(mem_nodes)) == 2
    for i, (r, p) in enumerate(zip(report, pages)):
        assert r["binding"] == "bound", r
        assert r["cpus"] and all(c in _cpus_of(mem_nodes[i]) for c in r["cpus"]), r
        # Every page of the node's slices and of its KV arenas is on its own OS node.
        assert set(p["weights"]) == {mem_nodes[i]} and p["weights"][mem_nodes[i]] > 0, (i, p)
        if r["kv_bytes"]:
            assert set(p["kv"]) == {mem_nodes[i]}, (i, p)


def test_inside_replicate_over_real_nodes():
    """--numa replicate: a whole copy per real node; every page of each copy on its own node."""
    _require_two_nodes()
    from test_forward import native_greedy, prompt_tokens

    one, two = _load("llama", "off"), _load("llama", "replicate")
    assert len(two.replicas) == 2
    assert len({r.topology.nodes[0].mem_node for r in two.replicas}) == 2
    prompt = prompt_tokens(one.n_vocab)
    want = native_greedy(one, prompt, 16)
    for replica in two.replicas:
        mem = replica.topology.nodes[0].mem_node
        assert replica.node_report()[0]["binding"] == "bound"
        pages = replica.native.page_report()[0]
        assert set(pages["weights"]) == {mem} and set(pages["kv"]) == {mem}, (mem, pages)
        assert native_greedy(replica, prompt, 16) == want


def _cpus_of(os_node: int) -> set[int]:
    return {c for n in read_os_nodes() if n.id == os_node for c in n.cpus}


# ---- the host side: boot the guest and run the above in it ----

def _vng() -> str | None:
    here = Path(sys.executable).parent / "vng"
    return str(here) if here.exists() else shutil.which("vng")


def vm_command(pytest_args: list[str]) -> tuple[list[str], dict[str, str]]:
    """The vng command that runs pytest with `pytest_args` in a two-node guest, and its environment.
    Skips (with the reason) when vng, qemu-system-x86_64 or a kernel image is missing."""
    vng = _vng()
    if vng is None:
        pytest.skip("virtme-ng is not installed (pip install virtme-ng)")
    if shutil.which("qemu-system-x86_64") is None:
        pytest.skip("qemu-system-x86_64 is not installed (apt-get install qemu-system-x86)")
    kernels = sorted(k for k in glob.glob("/boot/vmlinuz-*") if os.access(k, os.R_OK))
    if not kernels:
        pytest.skip("no readable kernel image in /boot (apt-get install linux-image-amd64)")
    if shutil.which("busybox") is None:
        pytest.skip("busybox is not installed (apt-get install busybox-static): virtme-ng's initramfs needs it")
    import sysinfer

    # The guest sees this filesystem read-only (/tmp writable): the same Python, the same installed
    # package, the models this host generated. -P: the guest's working directory (this one) must
    # not shadow the installed package with a source folder.
    package_root = str(Path(sysinfer.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in [package_root, os.environ.get("PYTHONPATH", "")] if p)
    # No third-party pytest plugins in the guest: the tests need none, and importing them (locust pulls
    # in gevent, then hypothesis, anyio, langsmith) took 2.6 s of CPU natively, minutes under emulation.
    env_args = [f"PYTHONPATH={pythonpath}", "SYSINFER_NUMA_VM=1", f"SYSINFER_NUMA_VM_KINDS={','.join(VM_KINDS)}",
                "PYTEST_DISABLE_PLUGIN_AUTOLOAD=1"]
    if os.environ.get("SYSINFER_TEST_CACHE"):
        env_args.append(f"SYSINFER_TEST_CACHE={os.environ['SYSINFER_TEST_CACHE']}")
    inner = " ".join(["env", *env_args, sys.executable, "-P", "-m", "pytest", "-p", "no:cacheprovider", *pytest_args])
    cmd = [vng, "--run", kernels[-1], "--disable-kvm", "--cpus", "2", "-m", "4G",
           "--numa", "2G,cpus=0", "--numa", "2G,cpus=1", "--exec", inner]
    env = dict(os.environ, PATH=os.pathsep.join([str(Path(vng).parent), os.environ.get("PATH", "")]))
    return cmd, env


def test_two_node_kernel():
    """Boots the guest (software emulation: ~30-50 s) and runs the `inside` tests there."""
    from support.model_files import tiny_model

    for kind in VM_KINDS:
        tiny_model(kind)  # generated here: the guest's filesystem is read-only
    cmd, env = vm_command(["-q", "-k", "inside", "-rs", str(Path(__file__).resolve())])
    start = time.monotonic()
    # Its own process group: on a timeout qemu goes too, not just the vng wrapper.
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=VM_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the NUMA guest did not finish in {VM_TIMEOUT} s")
    elapsed = time.monotonic() - start
    print(f"NUMA guest: {elapsed:.0f} s, exit {proc.returncode}\n{out[-2000:]}")
    assert proc.returncode == 0, out[-4000:]
    passed = re.search(r"(\d+) passed", out)
    assert passed and int(passed.group(1)) == 2 + len(VM_KINDS), out[-4000:]
    assert not re.search(r"\d+ (failed|skipped|error)", out), out[-4000:]
