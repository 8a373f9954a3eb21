"""The deployment files, checked by the tools that read them: the systemd unit with
`systemd-analyze verify` and `security --offline`, the Kubernetes manifests rendered by
`kubectl kustomize` and validated by `kubernetes-validate`, the Dockerfiles linted by hadolint.
scripts/test.sh installs each tool; outside CI a missing one skips its test, in CI it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUNTIME = REPO / "runtime"


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{tool} is missing: scripts/test.sh installs it")
        pytest.skip(f"{tool} is not installed (scripts/test.sh installs it)")
    return path


# ---------------------------------------------------------------- systemd


@pytest.fixture(scope="module")
def systemd_root(tmp_path_factory) -> Path:
    """A root with the distribution's units (sysinit.target, ...), the unit under test and stand-ins
    for the programs it runs: verify checks that ExecStart= names an executable file."""
    need("systemd-analyze")
    root = tmp_path_factory.mktemp("root")
    units = next((p for p in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")) if p.is_dir()), None)
    if units is None:
        pytest.skip("no systemd unit folder on this machine")
    shutil.copytree(units, root / "usr/lib/systemd/system", symlinks=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(RUNTIME / "systemd/sysinfer.service", root / "etc/systemd/system/")
    (root / "etc/sysinfer").mkdir()
    shutil.copy(RUNTIME / "systemd/sysinfer.env", root / "etc/sysinfer/")
    (root / "opt/sysinfer/bin").mkdir(parents=True)
    for name in ("sysinfer-bind", "sysinfer-server"):
        stub = root / "opt/sysinfer/bin" / name
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


def test_systemd_unit_verifies_cleanly(systemd_root):
    """verify exits 0 even on unknown values ("ignoring"), so any output is a failure."""
    proc = subprocess.run(["systemd-analyze", "verify", f"--root={systemd_root}",
                           "/etc/systemd/system/sysinfer.service"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip() and not proc.stderr.strip(), proc.stdout + proc.stderr


def test_systemd_unit_is_sandboxed(systemd_root):
    """systemd's own exposure score (0 = locked down, 10 = none): at most 2.5."""
    proc = subprocess.run(["systemd-analyze", "security", "--offline=yes", f"--root={systemd_root}",
                           "--threshold=25", "--no-pager", "/etc/systemd/system/sysinfer.service"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    assert "Overall exposure level" in proc.stdout


def test_systemd_unit_settings():
    unit = (RUNTIME / "systemd/sysinfer.service").read_text()
    for line in ("DynamicUser=yes", "ProtectSystem=strict", "NoNewPrivileges=yes", "Restart=on-failure",
                 "EnvironmentFile=/etc/sysinfer/sysinfer.env", "KillSignal=SIGTERM"):
        assert f"\n{line}\n" in unit, line
    assert "--host 0.0.0.0" in unit  # loopback is the server's default: the unit says so explicitly
    env = (RUNTIME / "systemd/sysinfer.env").read_text()
    assert "SYSINFER_API_KEY=" in env


# ---------------------------------------------------------------- Kubernetes

KUSTOMIZATIONS = ["base", "overlays/arm64", "examples/scale-out"]


def _kustomize_version(kubectl: str) -> tuple[int, ...]:
    out = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60).stdout
    for line in out.splitlines():
        if line.startswith("Kustomize Version:"):
            return tuple(int(x) for x in line.split("v", 1)[1].split(".")[:2])
    return (0,)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, Path]:
    kubectl = need("kubectl")
    if _kustomize_version(kubectl) < (4, 1):
        pytest.fail("kubectl's kustomize is older than v4.1 (labels, patches, replicas): scripts/test.sh "
                    "installs a newer kubectl")
    out = tmp_path_factory.mktemp("k8s")
    files = {}
    for k in KUSTOMIZATIONS:
        proc = subprocess.run([kubectl, "kustomize", str(RUNTIME / "kubernetes" / k)], capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        files[k] = out / (k.replace("/", "-") + ".yaml")
        files[k].write_text(proc.stdout)
    return files


def _docs(path: Path) -> list[dict]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def test_manifests_validate_against_kubernetes_schemas(rendered):
    """kubernetes-validate --strict (unknown fields rejected) on every rendered resource of a built-in
    kind; the Gateway API / Inference Extension kinds have no schema there (checked below instead)."""
    tool = need("kubernetes-validate")
    proc = subprocess.run([tool, "--strict", *map(str, rendered.values())], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    passed = proc.stdout.count(" passed for resource ")
    assert passed == 16, proc.stdout  # 5 in base, 5 in arm64, 6 in scale-out (with the HPA)
    for line in (proc.stdout + proc.stderr).splitlines():
        if line.startswith("WARN"):
            assert "HTTPRoute" in line or "InferencePool" in line, line


def _by_kind(docs: list[dict]) -> dict[str, dict]:
    return {d["kind"]: d for d in docs}


def test_base_deployment_is_guaranteed_and_probed(rendered):
    kinds = _by_kind(_docs(rendered["base"]))
    assert set(kinds) == {"ConfigMap", "PersistentVolumeClaim", "Deployment", "Service", "PodDisruptionBudget"}
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    res = c["resources"]
    assert res["requests"] == res["limits"]  # Guaranteed QoS
    assert float(res["requests"]["cpu"]).is_integer()  # whole cores for the static CPU manager
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # a 13B load from a cold cache
    assert c["args"][:3] == ["sysinfer-server", "--host", "0.0.0.0"]
    assert c["command"][0] == "sysinfer-bind"
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["models"]["readOnly"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True and pod["securityContext"]["runAsNonRoot"]
    drain = float(kinds["ConfigMap"]["data"]["SYSINFER_DRAIN_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > drain + 5  # preStop sleep + drain + exit
    labels = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    for selector in (kinds["Service"]["spec"]["selector"],
                     kinds["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]):
        assert selector.items() <= labels.items()


def test_arm64_overlay(rendered):
    pod = _by_kind(_docs(rendered["overlays/arm64"]))["Deployment"]["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"kubernetes.io/arch": "arm64"}
    assert pod["containers"][0]["image"].endswith("-aarch64")


def test_scale_out_example_fits_together(rendered):
    """What no schema checks here: the pool selects the server pods on their port, the route sends
    to the pool, the HPA scales the Deployment on the queue-depth gauge /metrics exposes."""
    kinds = _by_kind(_docs(rendered["examples/scale-out"]))
    deploy, pool, route, hpa = kinds["Deployment"], kinds["InferencePool"], kinds["HTTPRoute"], \
        kinds["HorizontalPodAutoscaler"]
    labels = deploy["spec"]["template"]["metadata"]["labels"]
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["selector"]["matchLabels"].items() <= labels.items()
    port = deploy["spec"]["template"]["spec"]["containers"][0]["ports"][0]["containerPort"]
    assert pool["spec"]["targetPorts"] == [{"number": port}]
    assert pool["spec"]["endpointPickerRef"]["name"]
    (backend,) = route["spec"]["rules"][0]["backendRefs"]
    assert (backend["group"], backend["kind"], backend["name"]) == (
        "inference.networking.k8s.io", "InferencePool", pool["metadata"]["name"])
    assert hpa["spec"]["scaleTargetRef"]["name"] == deploy["metadata"]["name"]
    assert hpa["spec"]["metrics"][0]["pods"]["metric"]["name"] == "sysinfer_num_requests_waiting"
    assert deploy["spec"]["replicas"] == hpa["spec"]["minReplicas"]


# ---------------------------------------------------------------- Docker

DOCKER = REPO / "docker"


def test_dockerfile_passes_hadolint():
    hadolint = need("hadolint")
    proc = subprocess.run([hadolint, "--no-color", "--config", str(DOCKER / "hadolint.yaml"), str(DOCKER / "Dockerfile")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_shape():
    """Multi-stage on openEuler 24.03 LTS, no compiler in the runtime stage, non-root, health check,
    the reference invocation as the command, the build steps in the scripts CI runs."""
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG BASE=openeuler/openeuler:24.03-lts" in text
    build, runtime = text.split("FROM ${BASE} AS runtime")
    assert "FROM ${BASE} AS build" in build and "gcc-c++" in build
    assert "gcc" not in runtime and "devel" not in runtime
    assert "docker/build-wheel.sh" in build and "install-runtime.sh" in runtime
    assert "\nUSER 10001:10001\n" in runtime
    assert 'HEALTHCHECK' in runtime and "sysinfer-healthcheck" in runtime
    assert 'CMD ["sysinfer-server", "/app/MODEL.gguf", "-t", "0.0", "-n", "4096"]' in runtime
    assert "SYSINFER_HOST=0.0.0.0" in runtime and "EXPOSE 7860" in runtime
