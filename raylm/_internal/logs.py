"""Keep the console to raylm's progress bar and results unless ``ray.verbose=true``."""

from __future__ import annotations

import logging
import os
import warnings

NOISY = (
    "ray.data",
    "ray.train",
    "ray.tune",
    "ray.serve",
    "DeepSpeed",
    "deepspeed",
    "torch.distributed",
    "transformers.modeling_utils",
    "datasets",
)


def quiet_libraries(verbose: bool) -> None:
    if verbose:
        return
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.WARNING)
    # Warnings about settings raylm makes on purpose: Ray Data says its progress bars are
    # off (raylm shows its own), DeepSpeed that its LR scheduler has not stepped yet at
    # initialize. DeepSpeed sets its logger's level when imported: call this after that.
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    # With transformers.modeling_utils at WARNING, every from_pretrained checks the
    # tensor-parallel plan and warns about layers it would not shard: none are sharded.
    logging.getLogger("transformers.distributed.tensor_parallel").setLevel(logging.ERROR)
    # Ray Train V2 logs every report's whole metrics dict at INFO through a logger named
    # by its file path (logging.getLogger(__file__)), which neither the ray.train level
    # nor RunConfig(logging_config=...) reaches.
    try:
        from ray.train.v2._internal.execution import context as train_context

        train_context.logger.setLevel(logging.WARNING)
    except ImportError:
        pass
    # The ONNX exporter's optimizer logs each rewrite it applies.
    for name in ("onnxscript", "onnx_ir"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Deprecation chatter from library internals (e.g. DeepSpeed's all_gather_into_tensor).
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", message=".*exclude_resources.*")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # transformers' per-load "Loading weights" / "Writing model shards" bars.
    import transformers

    transformers.utils.logging.disable_progress_bar()
