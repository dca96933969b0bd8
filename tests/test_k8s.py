"""KubeRay manifests: valid against the CRDs, entrypoints that raylm's config accepts,
a RayService config that is what raylm exports, non-root pods with limits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import raylm
from raylm.api import check_function, compose_checked
from raylm.jobs.submission import parse_command_line

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "k8s"
VALIDATOR = ROOT.parent / "shared" / "kuberay" / "validate"


def documents() -> list[tuple[Path, dict]]:
    out = []
    for path in sorted(K8S.rglob("*.yaml")):
        out += [(path, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return out


def ray_objects(kind: str) -> list[dict]:
    return [d for _, d in documents() if d.get("kind") == kind]


def test_manifests_validate():
    if not VALIDATOR.exists():
        if os.environ.get("CI"):
            pytest.fail(f"CI needs the KubeRay validator at {VALIDATOR}")
        pytest.skip("KubeRay validator not present next to the checkout")
    out = subprocess.run([sys.executable, str(VALIDATOR), str(K8S)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed, 0 error(s)" in out.stdout


def entrypoints() -> list[tuple[str, str]]:
    """(where, entrypoint) of every RayJob and every overlay's entrypoint patch."""
    found = [(d["metadata"]["name"], d["spec"]["entrypoint"]) for d in ray_objects("RayJob")]
    for path in (K8S / "overlays").rglob("kustomization.yaml"):
        for patch in yaml.safe_load(path.read_text()).get("patches", []):
            for op in yaml.safe_load(patch["patch"]):
                if op["path"] == "/spec/entrypoint":
                    found.append((f"{path.parent.name}:{patch['target']['name']}", op["value"]))
    return found


@pytest.mark.parametrize("where, entrypoint", entrypoints(), ids=lambda x: str(x)[:40])
def test_every_rayjob_entrypoint_is_a_valid_raylm_command(where, entrypoint):
    """What `raylm submit --dry-run` checks: composes, validates (the /runs files are the
    cluster's), and joins the cluster it runs on."""
    import shlex

    command, overrides = parse_command_line(shlex.split(entrypoint), where)
    cfg = compose_checked(command, overrides, where)
    check_function(command)(cfg, False)
    assert cfg.ray.address == "auto", where


def test_rayjobs_run_the_job_specs():
    """A RayJob and its jobs/ spec cannot drift: same entrypoint, same cluster."""
    for job in ray_objects("RayJob"):
        name = job["metadata"]["name"].removeprefix("raylm-")
        spec = yaml.safe_load((ROOT / "jobs" / f"{name}.yaml").read_text())
        assert job["spec"]["entrypoint"] == spec["entrypoint"], name
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": "raylm"}
    assert {j["metadata"]["name"] for j in ray_objects("RayJob")} >= {
        "raylm-pretrain",
        "raylm-finetune",
        "raylm-compress",
        "raylm-sweep",
    }


def test_rayservice_serve_config_is_what_raylm_exports(tmp_path):
    """Regenerated with the command in the manifest's header; compared byte for byte."""
    doc = ray_objects("RayService")[0]
    out = tmp_path / "serve.yaml"
    raylm.run(
        "serve",
        [
            "serve.models=[cls:/runs/compress/quantize]",
            "serve.host=0.0.0.0",
            "serve.autoscaling.max_replicas=4",
            "serve.auth_token_file=/etc/raylm-serve/token",
            f"serve.export={out}",
        ],
    )
    assert doc["spec"]["serveConfigV2"] == out.read_text()
    # The ingress mode is the cluster's environment: every Ray container has it.
    from raylm.serve.ingress import DEFAULT, env

    cluster = doc["spec"]["rayClusterConfig"]
    groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    for group in groups:
        for container in group["template"]["spec"]["containers"]:
            have = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env(DEFAULT).items() <= have.items(), container["name"]


def pod_specs() -> list[tuple[str, dict]]:
    specs = []
    for path, d in documents():
        spec = d.get("spec", {})
        cluster = spec.get("rayClusterConfig", spec) if d.get("kind") != "RayJob" else {}
        groups = [cluster.get("headGroupSpec"), *cluster.get("workerGroupSpecs", [])]
        specs += [
            (f"{path.name}:{g.get('groupName', 'head')}", g["template"]["spec"])
            for g in groups
            if g
        ]
        if d.get("kind") == "RayJob":
            specs.append((f"{path.name}:submitter", spec["submitterPodTemplate"]["spec"]))
    return specs


def test_pods_run_as_non_root_without_privilege_escalation_and_with_limits():
    specs = pod_specs()
    assert len(specs) >= 9
    for where, spec in specs:
        assert spec["securityContext"]["runAsNonRoot"] is True, where
        for c in spec["containers"]:
            assert c["securityContext"]["allowPrivilegeEscalation"] is False, where
            assert c["securityContext"]["capabilities"]["drop"] == ["ALL"], where
            assert c["resources"]["requests"] and c["resources"]["limits"], where


def test_cluster_has_cpu_and_gpu_groups_autoscaling_token_auth_and_shared_storage():
    (cluster,) = ray_objects("RayCluster")
    spec = cluster["spec"]
    assert spec["enableInTreeAutoscaling"] is True
    assert spec["authOptions"]["mode"] == "token"
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    gpu = groups["gpu"]["template"]["spec"]["containers"][0]["resources"]
    assert gpu["limits"]["nvidia.com/gpu"] == "1"
    assert (
        "nvidia.com/gpu"
        not in groups["cpu"]["template"]["spec"]["containers"][0]["resources"]["limits"]
    )
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, s in pod_specs()
        for v in s.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert claims == {"raylm-runs"}
    (pvc,) = [d for _, d in documents() if d.get("kind") == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]  # every node mounts it
    refs = [
        e["valueFrom"]["secretKeyRef"]
        for _, s in pod_specs()
        for c in s["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    ]
    assert refs and all(r["name"] == "raylm-object-store" for r in refs)


def test_dockerfile_builds_from_the_pinned_ray_image_as_non_root():
    import ray

    text = (K8S / "Dockerfile").read_text()
    assert f"rayproject/ray:{ray.__version__}-py311" in text
    users = [line.split()[1] for line in text.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert '"torch==2.13.0"' in text
