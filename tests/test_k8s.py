"""KubeRay manifests pass the offline CRD + operator-rule validator."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
VALIDATOR = ROOT.parent / "shared" / "kuberay" / "validate"


@pytest.mark.skipif(
    not VALIDATOR.exists(), reason="KubeRay validator not present next to the checkout"
)
def test_manifests_validate():
    out = subprocess.run(
        [sys.executable, str(VALIDATOR), str(ROOT / "k8s")], capture_output=True, text=True
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 failed, 0 error(s)" in out.stdout


def test_rayservice_serve_config_is_what_raylm_exports():
    """The RayService's serveConfigV2 passes Ray Serve's schema and equals what
    `raylm serve ... serve.export=FILE` writes for its args, so the two cannot drift."""
    import yaml
    from ray.serve.schema import ServeDeploySchema

    from raylm.serve import serve_config
    from raylm.serve.app import DEFAULTS

    doc = yaml.safe_load((ROOT / "k8s" / "base" / "rayservice-serve.yaml").read_text())
    config = yaml.safe_load(doc["spec"]["serveConfigV2"])
    ServeDeploySchema.model_validate(config)
    app = config["applications"][0]
    assert set(app["args"]) == set(DEFAULTS)
    http = config["http_options"]
    assert config == serve_config(
        app["args"], app["name"], app["route_prefix"], http["host"], http["port"]
    )
