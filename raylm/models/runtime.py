"""Load an exported model for inference with the runtime its artifact records.

``torch``: the task's transformers Auto class. ``onnxruntime``: ``model.onnx`` (what
``raylm compress``'s int8 step writes) in an ONNX Runtime session that answers like a
transformers model (``model(**encoding).logits``, ``model.config``), so predict and
serve use either without knowing which.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .artifact import Artifact

ONNX_FILE = "model.onnx"


class OnnxRuntimeModel:
    """An ONNX Runtime CPU session behind a transformers-like call."""

    device = torch.device("cpu")

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoConfig

        options = ort.SessionOptions()
        # Same thread budget as torch in this process (serve.threads, the report's).
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = str(Path(model_dir) / ONNX_FILE)
        self.session = ort.InferenceSession(self.path, options, providers=["CPUExecutionProvider"])
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.config = AutoConfig.from_pretrained(model_dir)

    def __call__(self, **inputs: Any) -> SimpleNamespace:
        feed = {
            name: np.ascontiguousarray(
                (v.cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)).astype(np.int64)
            )
            for name, v in inputs.items()
            if name in self.inputs
        }
        (logits,) = self.session.run(["logits"], feed)
        return SimpleNamespace(logits=torch.from_numpy(logits))

    def to(self, device) -> OnnxRuntimeModel:
        return self  # CPU only

    def eval(self) -> OnnxRuntimeModel:
        return self


def load_for_inference(model_dir: str | Path, task: str, device: str = "cpu"):
    """The model of ``model_dir`` in eval mode, on ``device`` where its runtime allows."""
    from . import register_architectures
    from .build import auto_class

    register_architectures()
    artifact = Artifact.read(model_dir)
    if artifact is not None and artifact.runtime == "onnxruntime":
        return OnnxRuntimeModel(model_dir)
    return auto_class(task).from_pretrained(str(model_dir)).to(device).eval()
