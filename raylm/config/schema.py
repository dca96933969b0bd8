"""Typed structured configs, registered in Hydra's ConfigStore.

Types are checked by Hydra/OmegaConf when the YAML and the command-line overrides are
merged onto these dataclasses, so ``trainer.lr=abc`` fails before any code runs. What a
value *means* (batch arithmetic, ZeRO stage, paths) is checked by :mod:`.validate`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class ModelConfig:
    # Preset name (the file name in conf/model/), recorded in raylm.json.
    name: str = MISSING
    # Architecture family: "gpt2" (causal LM) or "bert" (masked LM, optional NSP head).
    family: str = MISSING
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 2
    # None: 4 x hidden_size, as in both papers.
    intermediate_size: int | None = None
    max_positions: int = 512
    # None: the tokenizer's vocabulary size.
    vocab_size: int | None = None
    dropout: float = 0.1
    # A local Hugging Face directory (or a hub name where a network exists) whose config
    # and weights replace the preset's architecture and random initialisation.
    init_from: str | None = None
    # seq_cls only: a custom classification head by name (raylm.models.HEADS, e.g.
    # mean_pool) or package.module:ClassName; None keeps transformers' own head.
    head: str | None = None


@dataclass
class DataConfig:
    # Local txt / jsonl / json / csv / parquet files, or one datasets.save_to_disk dir.
    train_files: list[str] = field(default_factory=list)
    eval_files: list[str] = field(default_factory=list)
    text_column: str = "text"
    # Shuffle order within each worker's shard, re-drawn every epoch from trainer.seed.
    shuffle_buffer: int = 256
    # Documents per Ray Data map_batches call when tokenizing and packing.
    preprocess_batch_size: int = 256
    # Fine-tuning: the label column, an optional fixed label list (else the training
    # data's labels), and the seeded held-out fraction used when eval_files is empty.
    label_column: str = "label"
    labels: list[str] = field(default_factory=list)
    eval_fraction: float = 0.1


@dataclass
class TokenizerConfig:
    path: str = MISSING
    type: str = "bpe"
    vocab_size: int = 8000
    min_frequency: int = 2
    lowercase: bool = False


@dataclass
class DeepSpeedConfig:
    zero_stage: int = 2
    offload_optimizer: bool = False
    offload_param: bool = False
    # Any DeepSpeed key, merged last over the derived config, e.g.
    # +deepspeed.overrides.zero_optimization.reduce_bucket_size=50000000
    overrides: dict[str, Any] = field(default_factory=dict)
    # deepspeed=auto: the memory planner (raylm.train.plan) picks the stage and offload
    # (and, if need be, a smaller micro-batch with more grad_accum) before the run.
    auto: bool = False


@dataclass
class PlanConfig:
    # What deepspeed=auto and raylm plan budget for; null: read from the cluster.
    device_memory_gb: float | None = None
    host_memory_gb: float | None = None
    # Headroom kept free of the estimate (allocator fragmentation, estimate error).
    margin: float = 0.1


@dataclass
class ScalingConfig:
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 1.0
    # Extra custom resources per worker, e.g. {"accelerator_type:H100": 0.001}.
    resources_per_worker: dict[str, float] = field(default_factory=dict)
    placement_strategy: str = "PACK"


@dataclass
class TrainerConfig:
    # One step = one optimizer update = micro_batch_size x grad_accum x workers sequences.
    max_steps: int = 1000
    # When set, max_steps is derived from the packed dataset size.
    epochs: int | None = None
    micro_batch_size: int = 8
    grad_accum: int = 1
    seq_len: int = 128
    lr: float = 3e-4
    # The lr a decaying schedule ends at, as a fraction of trainer.lr; None: the
    # schedule's own default (cosine 0.1, linear 0.0). constant never decays.
    min_lr_ratio: float | None = None
    # Warmup: trainer.warmup_steps if set (it wins, as in HF Trainer), else this
    # fraction of max_steps; a fixed step count would outlast a short run.
    warmup_steps: int | None = None
    warmup_ratio: float = 0.1
    schedule: str = "cosine"
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    precision: str = "fp32"
    grad_clip: float = 1.0
    log_every: int = 10
    eval_every: int = 100
    eval_batches: int = 20
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    max_failures: int = 2
    mlm_probability: float = 0.15
    seed: int = 42
    # Keep the best model by this eval metric (e.g. eval_accuracy) and export it instead
    # of the last one; null exports the last. Patience > 0 stops after that many evals
    # without improvement.
    metric: str | None = None
    metric_mode: str = "min"
    early_stopping_patience: int = 0


@dataclass
class RayConfig:
    # Empty: start an embedded local cluster. Otherwise "auto" or "ray://host:10001" etc.
    address: str = ""
    # CPUs of the embedded local cluster (None: all of this machine's).
    num_cpus: int | None = None
    # Show Ray Data / Ray Train progress output from Ray itself.
    verbose: bool = False


@dataclass
class TokenizerJobConfig:
    """``raylm tokenizer``: train a tokenizer on data.train_files."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    overwrite: bool = False


@dataclass
class PretrainJobConfig:
    """``raylm pretrain``: masked or causal LM pretraining."""

    output_dir: str = MISSING
    task: str = "clm"
    resume: bool = False
    # A fresh run refuses an output_dir holding an earlier run unless this is set.
    overwrite: bool = False
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class FinetuneJobConfig(PretrainJobConfig):
    """``raylm finetune``: sequence or token classification on the pretraining loop."""

    task: str = "seq_cls"


@dataclass
class DistillConfig:
    # Student depth; None: half the teacher's (rounded up). Its layers start from the
    # teacher's, evenly spaced (every other one at half depth), when widths match.
    num_layers: int | None = None
    # Student width; None: the teacher's. A narrower student starts from random weights.
    hidden_size: int | None = None
    # loss = alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) * task loss
    alpha: float = 0.5
    temperature: float = 2.0
    # > 0 adds weight * (1 - cosine) between the last hidden states (same width only).
    cosine_weight: float = 0.0


@dataclass
class PruneConfig:
    # Fractions of all attention heads and of all FFN neurons to remove, ranked by
    # gradient importance (Michel et al. 2019) over the whole model; every layer keeps
    # at least one head and one neuron.
    heads: float = 0.5
    neurons: float = 0.5
    # Training batches (of trainer.micro_batch_size rows) the importance is summed over.
    importance_batches: int = 16
    # > 0: fine-tune the pruned model this many steps (a Ray Train job) to recover.
    recovery_steps: int = 0


@dataclass
class QuantizeConfig:
    # int8: ONNX Runtime dynamic quantization, for CPU serving (weights and embeddings
    # int8, activations quantized per batch). bf16 / fp16: torch weights, for GPUs.
    dtype: str = "int8"


@dataclass
class ReportConfig:
    # torch / ONNX Runtime intra-op threads while timing (1: a single-core figure).
    threads: int = 1
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32])
    # Each latency is the median of this many timed forward passes (after 2 warm-ups).
    repeats: int = 20
    # Eval rows the metric is computed on (0: all).
    max_eval_rows: int = 0


@dataclass
class CompressConfig:
    steps: list[str] = field(default_factory=lambda: ["distill", "prune", "quantize"])
    distill: DistillConfig = field(default_factory=DistillConfig)
    prune: PruneConfig = field(default_factory=PruneConfig)
    quantize: QuantizeConfig = field(default_factory=QuantizeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


@dataclass
class CompressJobConfig(PretrainJobConfig):
    """``raylm compress``: distill, prune and quantize a model, then report what it cost."""

    # None: the teacher's task (from its raylm.json or architecture).
    task: str | None = None  # type: ignore[assignment]
    compress: CompressConfig = field(default_factory=CompressConfig)


@dataclass
class PredictJobConfig:
    """``raylm predict``: batch prediction with a fine-tuned model over Ray Data."""

    model_dir: str = MISSING
    input: str = MISSING
    output: str = MISSING
    text_column: str = "text"
    batch_size: int = 64
    # Model replicas (Ray Data actors); each loads the model once.
    num_actors: int = 2
    cpus_per_actor: float = 1.0
    use_gpu: bool = False
    overwrite: bool = False
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class AutoscalingConfig:
    # max_replicas > 0 turns autoscaling on (num_replicas is then ignored); Serve adds or
    # removes replicas to keep about target_ongoing_requests in flight per replica.
    min_replicas: int = 1
    max_replicas: int = 0
    target_ongoing_requests: float = 2.0
    # How long load must stay above / below target before a replica is added / removed
    # (Serve's defaults).
    upscale_delay_s: float = 30.0
    downscale_delay_s: float = 600.0


@dataclass
class ServeConfig:
    # Several models in one application: ["name=DIR", ...]; each is its own deployment.
    models: list[str] = field(default_factory=list)
    # Write a Ray Serve config file (for `serve deploy` or a RayService's serveConfigV2)
    # here instead of starting anything.
    export: str | None = None
    # Deploy to the cluster's Serve (ray.address) and return, leaving the application
    # running there: what a `raylm submit` job or a CI step wants. False: serve until
    # Ctrl-C, then shut Serve down.
    detach: bool = False
    host: str = "127.0.0.1"
    port: int = 8000
    route_prefix: str = "/"
    app_name: str = "raylm"
    # How HTTP reaches the app (raylm/serve/ingress.py): haproxy (the fastest measured),
    # throughput (Serve's RAY_SERVE_THROUGHPUT_OPTIMIZED proxy) or proxy (Serve's
    # default). Set for the cluster raylm serve embeds; a cluster of its own (ray.address,
    # a RayService) needs the mode's environment variables itself.
    ingress: str = "haproxy"
    # Per model deployment.
    num_replicas: int = 1
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0
    # torch intra-op threads per replica.
    threads: int = 1
    # Requests a replica works on at once; past that they queue, and past
    # max_queued_requests (per deployment) new ones get 503 with Retry-After.
    max_ongoing_requests: int = 32
    max_queued_requests: int = 64
    retry_after_s: int = 1
    # Dynamic batching (@serve.batch): requests per forward pass, and how long the first
    # request of a batch waits for others. 0 waits for none: under load a batch is what
    # queued during the previous forward, and a lone request pays no wait; on a GPU a few
    # ms fill batches further.
    batch_size: int = 16
    batch_wait_s: float = 0.0
    # Request limits: a request past them is a 4xx naming the field.
    max_texts: int = 64
    max_chars: int = 2000
    max_new_tokens: int = 256
    # A request body past this many bytes is refused (413) as it arrives.
    max_body_bytes: int = 1_048_576
    # Bearer-token auth on every route but /healthz: the name of an environment variable
    # that holds the token, or a file that does (a Kubernetes Secret mounted in the pod).
    # The exported Serve config names the variable or file, never the token.
    auth_token_env: str | None = None
    auth_token_file: str | None = None
    # Origins a browser may call from (CORS); empty: none, the browser default.
    cors_origins: list[str] = field(default_factory=list)


@dataclass
class ServeJobConfig:
    """``raylm serve``: a Ray Serve application over one or more exported models."""

    # One model (served under its directory's name); or serve.models for several.
    model_dir: str | None = None
    serve: ServeConfig = field(default_factory=ServeConfig)
    ray: RayConfig = field(default_factory=RayConfig)


@dataclass
class SearchConfig:
    """``search``: what a sweep varies, how trials are chosen and which are stopped early.

    The group (conf/search/<name>.yaml) picks the algorithm; every key below can be set
    on the command line as ``search.<key>=...``.
    """

    # asha | pbt | optuna | random | grid (the conf/search option sets it).
    name: str = "random"
    # The space, in Hydra's sweeper grammar: {trainer.lr: "tag(log, interval(1e-5, 1e-3))",
    # trainer.micro_batch_size: "choice(8, 16)", model: "choice(bert-tiny, bert-small)"}.
    params: dict[str, Any] = field(default_factory=dict)
    # None: the base command's trainer.metric and trainer.metric_mode (eval_loss / min
    # when it has none). optuna also takes lists: metric=[eval_accuracy, latency_ms]
    # mode=[max, min] returns the Pareto front.
    metric: Any = None
    mode: Any = None
    # Trials to sample (grid: how many times the whole grid is repeated).
    num_samples: int = 4
    # None: as many as the cluster's CPUs (GPUs) hold one trial's workers.
    max_concurrent_trials: int | None = None
    # Times a failed trial is restarted (from its last checkpoint) before it counts as failed.
    max_failures: int = 1
    # Seeds what draws the trials' values (random, grid, asha and pbt's first draws,
    # Optuna's TPE): the same command samples the same values.
    seed: int = 0
    # asha: steps every trial runs before it can be stopped (None: trainer.eval_every), and
    # the fraction 1/reduction_factor of trials kept at each rung.
    grace_period: int | None = None
    reduction_factor: float = 2.0
    # pbt: steps between exploit/explore rounds (None: trainer.eval_every); the bottom
    # quantile_fraction of trials copies a top trial's checkpoint, then perturbs each
    # continuous value by x0.8 or x1.2 or (with resample_probability) redraws it.
    perturbation_interval: int | None = None
    quantile_fraction: float = 0.25
    resample_probability: float = 0.25
    # Stop every trial after this many seconds (None: no limit).
    time_budget_s: float | None = None


@dataclass
class SweepJobConfig:
    """``raylm sweep``: Ray Tune over whole ``raylm pretrain / finetune / compress`` runs."""

    # The command each trial runs.
    base: str = "finetune"
    # The base command's own overrides (the CLI puts every key the sweep does not own here).
    base_overrides: list[str] = field(default_factory=list)
    # Set by the command line: its key=value items the sweep does not own (appended to
    # base_overrides, so a sweep YAML's base_overrides and the command line add up).
    extra_overrides: list[str] = field(default_factory=list)
    search: SearchConfig = field(default_factory=SearchConfig)
    output_dir: str = MISSING
    resume: bool = False
    overwrite: bool = False
    ray: RayConfig = field(default_factory=RayConfig)


SCHEMAS: dict[str, type] = {
    "tokenizer": TokenizerJobConfig,
    "pretrain": PretrainJobConfig,
    "finetune": FinetuneJobConfig,
    "compress": CompressJobConfig,
    "predict": PredictJobConfig,
    "serve": ServeJobConfig,
    "sweep": SweepJobConfig,
}


def default_metric(task: str) -> str | None:
    """``${raylm.default_metric:${task}}``: the metric fine-tuning keeps the best model by."""
    from ..tasks import TASKS

    return TASKS[task].default_metric if task in TASKS else None


def register_configs() -> None:
    """Store each command's schema as ``<command>_schema``; its YAML lists it first in its
    defaults, so every group option (model/*.yaml, ...) merges onto typed fields."""
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("raylm.default_metric", default_metric, replace=True)
    cs = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        cs.store(name=f"{command}_schema", node=schema)
