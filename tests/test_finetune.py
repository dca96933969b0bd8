"""Fine-tuning for sequence classification on the pretraining loop (real Ray, DeepSpeed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import FAST, read_metrics

import raylm
from raylm.data.synthetic import write_labeled

pytestmark = pytest.mark.slow

FINETUNE = [
    *FAST,
    "trainer.lr=2e-3",
    "trainer.max_steps=120",
    "trainer.eval_every=60",
    "trainer.checkpoint_every=120",
    "trainer.warmup_steps=10",
    "model.dropout=0.0",
]


@pytest.fixture(scope="module")
def labeled(tmp_path_factory):
    d = tmp_path_factory.mktemp("labeled")
    return {
        "train": write_labeled(d / "train.jsonl", 800, seed=0),
        "eval": write_labeled(d / "eval.csv", 200, seed=1),
    }


@pytest.fixture(scope="module")
def base_encoder(tokenizers, tmp_path_factory):
    """A BERT encoder with no head at all, as downloaded base checkpoints often are."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    d = tmp_path_factory.mktemp("encoder") / "bert-base-like"
    tok = AutoTokenizer.from_pretrained(tokenizers["wordpiece"])
    torch.manual_seed(0)
    BertModel(
        BertConfig(
            vocab_size=len(tok),
            hidden_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=128,
            max_position_embeddings=128,
        )
    ).save_pretrained(d)
    tok.save_pretrained(d)
    return d


def finetune(tmp_path, labeled, *overrides):
    out = tmp_path / "run"
    summary = raylm.run(
        "finetune",
        [*FINETUNE, f"data.train_files=[{labeled['train']}]", f"output_dir={out}", *overrides],
    )
    return out, summary


def final_eval(out):
    return [r for r in read_metrics(out) if "eval_accuracy" in r][-1]


def test_seq_cls_from_a_base_encoder_without_head(
    ray_cluster, labeled, base_encoder, tmp_path, capsys
):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, _ = finetune(
        tmp_path, labeled, f"model.init_from={base_encoder}", f"data.eval_files=[{labeled['eval']}]"
    )
    assert "has no seq_cls head: a new one is initialized" in capsys.readouterr().out
    ev = final_eval(out)
    assert ev["eval_accuracy"] >= 0.9 and ev["eval_macro_f1"] >= 0.9
    assert set(ev["eval_precision"]) == {"city", "farm", "forest", "sea"}
    assert (
        sum(map(sum, ev["eval_confusion"])) >= 190
    )  # every eval row scored (less the split remainder)
    # The artifact names its labels; the reloaded model predicts them.
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    assert model.config.id2label == {0: "city", 1: "farm", 2: "forest", 3: "sea"}
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert (
        meta["labels"] == ["city", "farm", "forest", "sea"]
        and meta["metrics"]["eval_accuracy"] >= 0.9
    )
    batch = tok(
        ["the old ship sails near the harbor.", "the calm cow grazes beside the barn."],
        return_tensors="pt",
        padding=True,
    )
    pred = model(**batch).logits.argmax(-1).tolist()
    assert [model.config.id2label[p] for p in pred] == ["sea", "farm"]


def test_seq_cls_gpt2_family_holds_out_eval(ray_cluster, labeled, tokenizers, tmp_path):
    out, _ = finetune(tmp_path, labeled, "model=gpt2-tiny", f"tokenizer.path={tokenizers['bpe']}")
    assert final_eval(out)["eval_accuracy"] >= 0.9
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out / "model")
    assert tok.pad_token is not None  # GPT-2 gained a pad token for batched inference
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert model.config.pad_token_id == tok.pad_token_id


def test_unseen_eval_labels_are_named(labeled, base_encoder, tmp_path):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(
        '{"text": "the red ship sails.", "label": "sea"}\n{"text": "a moon.", "label": "space"}\n'
    )
    with pytest.raises(raylm.ConfigError, match="labels not in the training data: space") as err:
        finetune(tmp_path, labeled, f"model.init_from={base_encoder}", f"data.eval_files=[{bad}]")
    assert err.value.key == "data.eval_files"


def test_missing_label_column_is_named(labeled, base_encoder, tmp_path):
    with pytest.raises(raylm.ConfigError, match="column 'topic' not found") as err:
        finetune(tmp_path, labeled, f"model.init_from={base_encoder}", "data.label_column=topic")
    assert err.value.key == "data.label_column"


def test_best_model_is_exported_and_training_stops_early(
    ray_cluster, labeled, base_encoder, tmp_path
):
    out, summary = finetune(
        tmp_path,
        labeled,
        f"model.init_from={base_encoder}",
        "trainer.max_steps=400",
        "trainer.eval_every=20",
        "trainer.early_stopping_patience=2",
    )
    evals = [r for r in read_metrics(out) if "eval_accuracy" in r]
    best_value = max(r["eval_accuracy"] for r in evals)
    best_step = next(r["step"] for r in evals if r["eval_accuracy"] == best_value)
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert meta["best"]["early_stopped"] and meta["best"]["last_step"] < 400
    assert meta["best"]["last_step"] == best_step + 2 * 20  # two stale evals, then stop
    assert meta["step"] == meta["best"]["step"] == best_step
    assert meta["metrics"]["eval_accuracy"] == best_value
    assert (out / "confusion_matrix.png").stat().st_size > 1000 and summary["best"][
        "step"
    ] == best_step
    # The snapshot stays: `resume=true trainer.max_steps=...` may still find it the best.
    assert (out / "best" / "best").is_dir()


def test_predict_matches_a_direct_forward_pass(ray_cluster, labeled, base_encoder, tmp_path):
    """One model, every tabular format predict reads and writes (one training run)."""
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from raylm.data.synthetic import labeled_documents

    out, _ = finetune(
        tmp_path,
        labeled,
        f"model.init_from={base_encoder}",
        "trainer.max_steps=40",
        "trainer.eval_every=40",
        "trainer.checkpoint_every=40",
    )
    rows = pd.DataFrame(labeled_documents(150, seed=9))
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    with torch.no_grad():
        probs = torch.softmax(
            model(**tok(list(rows["text"]), padding=True, return_tensors="pt")).logits, -1
        )
    names = [model.config.id2label[i] for i in range(probs.shape[1])]
    for suffix in (".jsonl", ".csv"):
        src = tmp_path / f"in{suffix}"
        if suffix == ".jsonl":
            rows.to_json(src, orient="records", lines=True)
        else:
            rows.to_csv(src, index=False)
        dst = tmp_path / f"out{suffix}"
        raylm.run(
            "predict",
            [f"model_dir={out / 'model'}", f"input={src}", f"output={dst}", "batch_size=16"],
        )
        got = pd.read_json(dst, lines=True) if suffix == ".jsonl" else pd.read_csv(dst)
        assert list(got["text"]) == list(rows["text"]), suffix  # one row per input, in order
        assert list(got["label"]) == [names[i] for i in probs.argmax(-1).tolist()], suffix
        for i, name in enumerate(names):
            assert torch.allclose(
                torch.tensor(got[f"prob_{name}"].to_numpy(), dtype=torch.float32),
                probs[:, i],
                atol=1e-5,
            ), (suffix, name)


def test_predict_rejects_a_model_dir_without_weights(tmp_path, base_encoder):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(base_encoder, broken)
    for f in broken.glob("*.safetensors"):
        f.unlink()
    src = tmp_path / "in.jsonl"
    src.write_text('{"text": "the red ship."}\n')
    with pytest.raises(raylm.ConfigError, match="has a config but no weights") as err:
        raylm.run(
            "predict", [f"model_dir={broken}", f"input={src}", f"output={tmp_path / 'o.jsonl'}"]
        )
    assert err.value.key == "model_dir"
    assert not (tmp_path / "o.jsonl").exists()


def test_zero3_finetune_from_a_raylm_pretrain_artifact(
    ray_cluster, labeled, corpus, tokenizers, tmp_path
):
    """The whole path: raylm pretrain (MLM) -> raylm finetune under ZeRO-3 -> predictions."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    pre = tmp_path / "pre"
    raylm.run(
        "pretrain",
        [
            *FAST,
            "model=bert-tiny",
            "task=mlm",
            f"data.train_files=[{corpus['train']}]",
            f"tokenizer.path={tokenizers['wordpiece']}",
            f"output_dir={pre}",
            "trainer.max_steps=10",
            "trainer.checkpoint_every=10",
            "trainer.eval_every=10",
        ],
    )
    out, _ = finetune(tmp_path, labeled, f"model.init_from={pre / 'model'}", "deepspeed=zero3")
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert meta["config"]["deepspeed"]["zero_stage"] == 3
    assert (
        meta["export_check"]["max_abs_logit_diff"] <= 1e-4
    )  # gathered ZeRO-3 weights = trained engine
    assert meta["metrics"]["eval_accuracy"] >= 0.9
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    pred = model(**tok(["the swift fox hunts near the river."], return_tensors="pt")).logits.argmax(
        -1
    )
    assert model.config.id2label[int(pred)] == "forest"


def test_init_from_a_legacy_bin_checkpoint(ray_cluster, labeled, base_encoder, tmp_path):
    """Older save_pretrained dirs hold pytorch_model.bin; transformers loads it with
    torch.load(weights_only=True), so no pickled code runs."""
    import shutil

    from safetensors.torch import load_file

    legacy = tmp_path / "legacy"
    shutil.copytree(base_encoder, legacy)
    weights = load_file(legacy / "model.safetensors")
    (legacy / "model.safetensors").unlink()
    torch.save(weights, legacy / "pytorch_model.bin")
    out, summary = finetune(
        tmp_path,
        labeled,
        f"model.init_from={legacy}",
        "trainer.max_steps=60",
        "trainer.eval_every=60",
        "trainer.checkpoint_every=60",
    )
    assert summary["metrics"]["eval_accuracy"] >= 0.9
    assert (out / "model" / "model.safetensors").exists()  # exported as safetensors


def test_registered_head_mean_pool(ray_cluster, labeled, base_encoder, tmp_path, capsys):
    """model.head=mean_pool: a raylm head on a base encoder; the export loads with the
    Auto class (raylm registers it) and raylm predict serves it."""
    import pandas as pd
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    out, summary = finetune(
        tmp_path, labeled, f"model.init_from={base_encoder}", "model.head=mean_pool"
    )
    assert "model.head=mean_pool: a new head is initialized" in capsys.readouterr().out
    assert summary["metrics"]["eval_accuracy"] >= 0.9
    config = json.loads((out / "model" / "config.json").read_text())
    assert config["architectures"] == ["EncoderWithHeadForSequenceClassification"]
    assert config["head"] == "mean_pool" and config["encoder"]["model_type"] == "bert"
    model = AutoModelForSequenceClassification.from_pretrained(out / "model").eval()
    tok = AutoTokenizer.from_pretrained(out / "model")
    texts = ["the old ship sails near the harbor.", "the calm cow grazes beside the barn."]
    with torch.no_grad():
        pred = model(**tok(texts, return_tensors="pt", padding=True)).logits.argmax(-1).tolist()
    assert [model.config.id2label[p] for p in pred] == ["sea", "farm"]

    src, dst = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    pd.DataFrame({"text": texts}).to_json(src, orient="records", lines=True)
    raylm.run("predict", [f"model_dir={out / 'model'}", f"input={src}", f"output={dst}"])
    assert list(pd.read_json(dst, lines=True)["label"]) == ["sea", "farm"]


def test_user_head_by_import_path_under_zero3(ray_cluster, labeled, base_encoder, tmp_path):
    """A head defined outside raylm (tests/custom_heads.py, the README example), named by
    import path, trained with ZeRO-3; the export reproduces the engine's logits."""
    from transformers import AutoModelForSequenceClassification

    out, summary = finetune(
        tmp_path,
        labeled,
        f"model.init_from={base_encoder}",
        "model.head=custom_heads:PooledDropoutLinear",
        "deepspeed=zero3",
    )
    assert summary["metrics"]["eval_accuracy"] >= 0.9
    meta = json.loads((out / "model" / "raylm.json").read_text())
    assert meta["export_check"]["max_abs_logit_diff"] <= 1e-4
    model = AutoModelForSequenceClassification.from_pretrained(out / "model")
    assert type(model.head).__name__ == "PooledDropoutLinear"


def test_head_only_the_driver_can_import_is_one_config_error(
    ray_cluster, labeled, base_encoder, tmp_path, monkeypatch
):
    """A head module on the driver's path but not the workers' fails on every worker;
    the run ends with that one ConfigError naming model.head, not a worker traceback."""
    local = tmp_path / "driver_only"
    local.mkdir()
    (local / "driver_only_heads.py").write_text(
        (Path(__file__).parent / "custom_heads.py").read_text()
    )
    monkeypatch.syspath_prepend(str(local))
    with pytest.raises(raylm.ConfigError) as err:
        finetune(
            tmp_path,
            labeled,
            f"model.init_from={base_encoder}",
            "model.head=driver_only_heads:PooledDropoutLinear",
            "trainer.max_failures=0",
        )
    assert err.value.key == "model.head"
    assert "cannot import driver_only_heads:PooledDropoutLinear" in err.value.message
