"""The task registry, and the fixes that came with giving each task one home: the learning
rate floor of every schedule, input lengths and vocabularies of custom-head models."""

from __future__ import annotations

import pytest
import transformers
from omegaconf import OmegaConf

import raylm
from raylm.config import ConfigError
from raylm.tasks import TASKS, get_task
from raylm.train.deepspeed_config import deepspeed_config


def test_every_task_names_its_auto_class_predictor_and_metrics():
    assert set(TASKS) == {"clm", "mlm", "mlm_nsp", "seq_cls", "token_cls"}
    for name, task in TASKS.items():
        assert hasattr(transformers, task.auto_class), name
        assert task.endpoint and task.predictor and task.metrics[0] == "eval_loss", name
        assert task.headline_metric in task.metrics, name
        assert callable(task.encoder()), name
    assert [n for n, t in TASKS.items() if t.labeled] == ["seq_cls", "token_cls"]
    with pytest.raises(ConfigError, match="task: must be one of"):
        get_task("summarize")


def schedule(*overrides):
    cfg = raylm.compose("pretrain", ["trainer.lr=1e-3", *overrides])
    return deepspeed_config(OmegaConf.to_container(cfg, resolve=True), 1, 100)["scheduler"]


def test_min_lr_ratio_is_honoured_or_refused_by_every_schedule(corpus, tokenizers, tmp_path):
    assert schedule("trainer.schedule=cosine")["params"]["cos_min_ratio"] == 0.1  # default
    assert (
        schedule("trainer.schedule=cosine", "trainer.min_lr_ratio=0.3")["params"]["cos_min_ratio"]
        == 0.3
    )
    linear = schedule("trainer.schedule=linear", "trainer.min_lr_ratio=0.2")["params"]
    assert linear["warmup_min_lr"] == pytest.approx(2e-4) and linear["warmup_max_lr"] == 1e-3
    assert schedule("trainer.schedule=linear")["params"]["warmup_min_lr"] == 0.0
    with pytest.raises(ConfigError, match="trainer.min_lr_ratio: trainer.schedule=constant never"):
        raylm.run(
            "pretrain",
            [
                f"data.train_files=[{corpus['train']}]",
                f"tokenizer.path={tokenizers['bpe']}",
                f"output_dir={tmp_path / 'run'}",
                "trainer.schedule=constant",
                "trainer.min_lr_ratio=0.1",
            ],
        )


@pytest.fixture(scope="module")
def headed_dir(tokenizers, tmp_path_factory):
    """A custom-head classifier: its config (raylm_headed) has no positions or vocabulary
    of its own, only its encoder's."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from raylm.models.heads import build_headed

    tok = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    encoder = BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            max_position_embeddings=96,
        )
    )
    labels = ["city", "farm", "forest", "sea"]
    model = build_headed(
        "mean_pool", encoder, {"num_labels": 4, "id2label": dict(enumerate(labels))}, 0.1
    )
    d = tmp_path_factory.mktemp("headed") / "model"
    model.save_pretrained(d)
    tok.save_pretrained(d)
    return d


def test_custom_head_models_size_inputs_by_their_encoder(headed_dir):
    from raylm.models import max_input_length
    from raylm.models.build import load_init_config
    from raylm.predict.predictor import Classifier

    config = load_init_config(str(headed_dir))
    assert not hasattr(config, "max_position_embeddings")
    assert max_input_length(config) == 96
    classifier = Classifier(str(headed_dir))
    assert classifier.max_length == 96
    long_text = " ".join(["the red ship sails near the harbor."] * 40)  # > 96 tokens
    assert classifier.probabilities([long_text]).shape == (1, 4)


def test_fine_tuning_from_a_custom_head_artifact_reads_its_encoders_vocabulary(
    headed_dir, tmp_path
):
    from raylm.data.synthetic import write_labeled
    from raylm.train.job import prepare

    train = write_labeled(tmp_path / "train.jsonl", 50)
    c = prepare(
        raylm.compose(
            "finetune",
            [
                f"model.init_from={headed_dir}",
                f"data.train_files=[{train}]",
                f"output_dir={tmp_path / 'run'}",
                "trainer.seq_len=64",
            ],
        )
    )
    assert c["vocab_size"] == transformers.AutoTokenizer.from_pretrained(headed_dir).vocab_size
