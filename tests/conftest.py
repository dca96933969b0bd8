"""Shared fixtures: one real local Ray cluster per session, a generated corpus, tokenizers."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from raylm._internal.cluster import WORKER_ENV
from raylm.train.metrics import read_metrics as _read_metrics

os.environ.setdefault("RAY_TRAIN_V2_ENABLED", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
for _key, _value in WORKER_ENV.items():  # as raylm's own init_ray sets them
    os.environ.setdefault(_key, _value)

# Small enough that a run takes seconds on two cores, large enough that losses fall clearly.
FAST = [
    "trainer.seq_len=64",
    "trainer.micro_batch_size=8",
    "trainer.lr=3e-3",
    "trainer.warmup_steps=5",
    "trainer.log_every=5",
    "trainer.eval_batches=4",
    "scaling.num_workers=2",
]


@pytest.fixture(scope="session")
def ray_cluster(s3):
    """(``s3`` first: its credentials must be in the environment the workers inherit.)"""
    import ray

    # Ray workers inherit this process's environment: with tests/ on their PYTHONPATH they
    # import tests/custom_heads.py by name, as a user's own package would be imported.
    here = str(Path(__file__).resolve().parent)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    # Serve on this cluster (the serve tests) runs in raylm's default ingress mode.
    from raylm.serve.ingress import DEFAULT, use

    use(DEFAULT)
    # Logical CPUs above the machine's 2 cores: two 1-CPU train workers plus headroom for
    # Ray Data tasks, on CI as here.
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A real S3 API on loopback (moto's server): ``uri(key)`` gives an s3:// URI in its
    bucket that pyarrow, and so Ray Train, opens. Credentials go through the environment,
    as they would on a cluster (processes started after this inherit them)."""
    import logging

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    env = {
        "AWS_ACCESS_KEY_ID": "raylm-test",
        "AWS_SECRET_ACCESS_KEY": "raylm-test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    query = f"endpoint_override={host}:{port}&scheme=http&region=us-east-1"

    def uri(key: str) -> str:
        return f"s3://raylm/{key}?{query}"

    import pyarrow.fs

    fs, _ = pyarrow.fs.FileSystem.from_uri(uri("") + "&allow_bucket_creation=true")
    fs.create_dir("raylm")
    yield uri
    server.stop()
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> dict[str, Path]:
    from raylm.data.synthetic import write_corpus

    d = tmp_path_factory.mktemp("corpus")
    return {
        "train": write_corpus(d / "train.txt", 600, seed=0),
        "eval": write_corpus(d / "eval.txt", 120, seed=1),
    }


@pytest.fixture(scope="session")
def tokenizers(corpus, tmp_path_factory) -> dict[str, Path]:
    import raylm

    d = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind in ("bpe", "wordpiece"):
        raylm.run(
            "tokenizer",
            [
                f"data.train_files=[{corpus['train']}]",
                f"tokenizer.path={d / kind}",
                f"tokenizer.type={kind}",
                "tokenizer.vocab_size=600",
            ],
        )
        out[kind] = d / kind
    return out


def read_metrics(output_dir: Path) -> list[dict]:
    return _read_metrics(Path(output_dir) / "metrics.jsonl")


def losses(output_dir: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["loss"]) for r in read_metrics(output_dir) if "loss" in r]


def wait_for_step(out: Path, step: int, timeout: float = 300, proc=None) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"run ended early with {proc.returncode}")
        if (out / "metrics.jsonl").exists():
            steps = [r["step"] for r in read_metrics(out) if "loss" in r]
            if steps and steps[-1] >= step:
                return steps[-1]
        time.sleep(0.02)
    raise AssertionError(f"step {step} not reached in {timeout}s")


def train_worker_pids() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "ray::RayTrainWorker"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]
