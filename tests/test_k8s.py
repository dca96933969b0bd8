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
