"""Serving: a real Ray Serve application on the session's local cluster, real HTTP.

Tiny random-weight models of each task stand in for trained ones: the tests are about
the served answers equalling the model run directly, and about how bad input and
overload are answered.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import hypothesis
import hypothesis.errors
import pytest
import requests
import schemathesis
import torch
import yaml
from omegaconf import OmegaConf

import raylm

PORT = 8765
LABELS = {
    "cls": ["city", "farm", "forest", "sea"],
    "ner": ["B-LOC", "B-PER", "I-LOC", "I-PER", "O"],
}
TASKS = {"cls": "seq_cls", "ner": "token_cls", "mlm": "mlm", "gpt": "clm"}


def make_model_dirs(tokenizers, root: Path) -> dict[str, Path]:
    """One exported model per task, as raylm's export writes them (with raylm.json)."""
    from transformers import AutoTokenizer

    from raylm.models.build import build_model

    out = {}
    for name, task in TASKS.items():
        preset = "gpt2-tiny" if task == "clm" else "bert-tiny"
        tok = AutoTokenizer.from_pretrained(tokenizers["bpe" if task == "clm" else "wordpiece"])
        model_cfg = OmegaConf.to_container(raylm.compose("finetune", [f"model={preset}"]).model)
        torch.manual_seed(0)
        model = build_model(task, model_cfg, len(tok), tok, LABELS.get(name))
        d = root / name / "model"
        model.save_pretrained(d)
        tok.save_pretrained(d)
        meta = {"task": task, "labels": LABELS.get(name), "metrics": {"eval_loss": 1.5}}
        (d / "raylm.json").write_text(json.dumps(meta))
        out[name] = d
    return out


@pytest.fixture(scope="module")
def model_dirs(tokenizers, tmp_path_factory):
    return make_model_dirs(tokenizers, tmp_path_factory.mktemp("served"))


def serve_overrides(model_dirs, *extra):
    models = ",".join(f"{n}:{d}" for n, d in model_dirs.items())
    return [
        f"serve.models=[{models}]",
        f"serve.port={PORT}",
        "serve.cpus_per_replica=0.25",
        "serve.max_texts=8",
        "serve.max_chars=200",
        "serve.max_new_tokens=64",
        "serve.max_body_bytes=20000",
        *extra,
    ]


@pytest.fixture(scope="module")
def url(ray_cluster, model_dirs):
    from ray import serve

    from raylm.serve.job import app_args, start, validate_serve

    c = OmegaConf.to_container(raylm.compose("serve", serve_overrides(model_dirs)), resolve=True)
    validate_serve(c)
    base = start(c, app_args(c))
    yield base
    serve.shutdown()


def post(url, path, body, **kw):
    return requests.post(url + path, json=body, timeout=60, **kw)


def test_models_and_health(url):
    assert requests.get(url + "/healthz", timeout=10).json()["status"] == "ok"
    models = {m["name"]: m for m in requests.get(url + "/v1/models", timeout=10).json()["models"]}
    assert {n: m["task"] for n, m in models.items()} == TASKS
    assert models["cls"]["labels"] == LABELS["cls"] and models["cls"]["endpoint"] == "/v1/classify"
    assert models["gpt"]["metrics"] == {"eval_loss": 1.5}
    assert "/v1/classify" in requests.get(url + "/openapi.json", timeout=10).json()["paths"]


TEXTS = ["the red ship sails near the harbor.", "a calm cow grazes.", "the owl watches"]


def test_classify_equals_the_model_run_directly(url, model_dirs):
    from raylm.predict.predictor import Classifier

    got = post(url, "/v1/classify", {"texts": TEXTS}).json()
    direct = Classifier(str(model_dirs["cls"])).probabilities(TEXTS)
    assert got["model"] == "cls"
    for row, probs in zip(got["results"], direct, strict=True):
        served = [row["probabilities"][label] for label in LABELS["cls"]]
        assert served == pytest.approx(probs.tolist(), abs=1e-5)
        assert row["label"] == LABELS["cls"][int(probs.argmax())]


def test_tag_equals_the_model_run_directly(url, model_dirs):
    from raylm.predict.predictor import Tagger

    text = "anna  smith walks to north harbor ."
    got = post(url, "/v1/tag", {"texts": [text]}).json()["results"][0]
    tags, scores = Tagger(str(model_dirs["ner"])).tag([text.split()])[0]
    assert [t["tag"] for t in got["tokens"]] == tags
    assert [t["score"] for t in got["tokens"]] == pytest.approx(scores, abs=1e-5)
    for token in got["tokens"]:
        assert text[token["start"] : token["end"]] == token["word"]  # character spans
    for entity in got["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]


def test_fill_mask_equals_the_model_run_directly(url, model_dirs):
    from raylm.predict.predictor import FillMasker

    texts = ["the red [MASK] sails near the [MASK].", "the [MASK] cow"]
    got = post(url, "/v1/fill-mask", {"texts": texts, "top_k": 3}).json()["results"]
    direct = FillMasker(str(model_dirs["mlm"])).fill(texts, 3)
    assert [len(t) for t in got] == [2, 1]  # one candidate list per mask token
    for served_text, direct_text in zip(got, direct, strict=True):
        for served, expected in zip(served_text, direct_text, strict=True):
            assert [c["token"] for c in served] == [c["token"] for c in expected]
            assert [c["score"] for c in served] == pytest.approx(
                [c["score"] for c in expected], abs=1e-5
            )


def test_generate_greedy_stream_and_seed(url, model_dirs):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dirs["gpt"])
    model = AutoModelForCausalLM.from_pretrained(model_dirs["gpt"]).eval()
    ids = tok("the swift fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = model.generate(ids, do_sample=False, max_new_tokens=10, pad_token_id=tok.eos_token_id)
    expected = tok.decode(ref[0, ids.shape[1] :], skip_special_tokens=True)
    body = {"prompt": "the swift fox", "max_new_tokens": 10, "temperature": 0}
    assert post(url, "/v1/generate", body).json()["text"] == expected

    r = post(url, "/v1/generate", {**body, "stream": True}, stream=True)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line[len("data: ") :] for line in r.iter_lines(decode_unicode=True) if line]
    assert events[-1] == "[DONE]" and len(events) > 2
    assert "".join(json.loads(e)["text"] for e in events[:-1]) == expected

    sampled = {**body, "temperature": 0.9, "top_k": 50, "top_p": 0.95, "seed": 7}
    first = post(url, "/v1/generate", sampled).json()["text"]
    assert post(url, "/v1/generate", sampled).json()["text"] == first


def test_64_concurrent_requests_all_answered_correctly(url, model_dirs):
    from raylm.data.synthetic import labeled_documents
    from raylm.predict.predictor import Classifier

    texts = [r["text"] for r in labeled_documents(64, seed=3)]
    expected = Classifier(str(model_dirs["cls"])).probabilities(texts).argmax(-1)
    with ThreadPoolExecutor(64) as pool:
        responses = list(pool.map(lambda t: post(url, "/v1/classify", {"texts": [t]}), texts))
    assert [r.status_code for r in responses] == [200] * 64
    assert [r.json()["results"][0]["label"] for r in responses] == [
        LABELS["cls"][i] for i in expected
    ]
    # @serve.batch at work: the burst shared forward passes.
    served = next(
        m["served"]
        for m in requests.get(url + "/v1/models", timeout=10).json()["models"]
        if m["name"] == "cls"
    )
    assert served["requests"] >= 64 and served["forward_passes"] < served["requests"]


BAD = [
    ("/v1/classify", "{not json", 400, "body", "malformed JSON"),
    ("/v1/classify", {"texts": "one text"}, 422, "texts", "valid list"),
    ("/v1/classify", {"texts": [1, 2]}, 422, "texts.0", "valid string"),
    ("/v1/classify", {"texts": []}, 422, "texts", "at least 1 item"),
    ("/v1/classify", {"texts": ["a"] * 9}, 422, "texts", "at most 8 texts per request, got 9"),
    ("/v1/classify", {"texts": ["a" * 201]}, 422, "texts.0", "201 characters; at most 200"),
    ("/v1/classify", {"texts": ["  "]}, 422, "texts.0", "is empty"),
    ("/v1/classify", {"texts": ["a"], "model": "nope"}, 404, "model", "unknown model 'nope'"),
    ("/v1/classify", {"texts": ["a"], "model": "gpt"}, 400, "model", "'gpt' is a clm model"),
    ("/v1/classify", {"texts": ["a"], "colour": 1}, 422, "colour", "Extra inputs"),
    ("/v1/tag", {"texts": ["a"], "model": "cls"}, 400, "model", "answers /v1/classify"),
    ("/v1/fill-mask", {"texts": ["no mask here"]}, 422, "texts.0", "has no mask token [MASK]"),
    ("/v1/fill-mask", {"texts": ["[MASK]"], "top_k": 0}, 422, "top_k", "greater than or equal"),
    ("/v1/generate", {"prompt": "a", "max_new_tokens": 65}, 422, "max_new_tokens", "at most 64"),
    ("/v1/generate", {"prompt": "a", "temperature": -1}, 422, "temperature", "greater than"),
    ("/v1/generate", {"prompt": ""}, 422, "prompt", "at least 1 character"),
    ("/v1/generate", {"prompt": "a", "top_k": 10**6}, 422, "top_k", "(the vocabulary)"),
    ("/v1/generate", {"prompt": "a", "seed": 2**64}, 422, "seed", "less than"),
    ("/v1/classify", {"texts": ["a" * 100] * 250}, 413, "body", "larger than 20000 bytes"),
    # nested past Python's recursion limit: the JSON parser itself gives up
    ("/v1/classify", '{"texts": ' + "[" * 5000 + "]" * 5000 + "}", 400, "body", "nested too"),
    ("/v1/classify", {"texts": [[[["a"]]]]}, 422, "texts.0", "valid string"),
]


@pytest.mark.parametrize(
    ("path", "body", "status", "field", "message"), BAD, ids=[f"{b[0]}:{b[3]}" for b in BAD]
)
def test_bad_input_is_a_4xx_naming_the_field(url, path, body, status, field, message):
    if isinstance(body, str):
        r = requests.post(
            url + path, data=body, headers={"content-type": "application/json"}, timeout=30
        )
    else:
        r = post(url, path, body)
    assert r.status_code == status, r.text
    assert r.json()["field"] == field
    assert r.json()["error"].startswith(f"{field}: ") and message in r.json()["error"]


RAW = [
    ("POST", "/v1/classify", "text/plain", 415, "content-type", "is text/plain; send applic"),
    ("POST", "/v1/classify", "application/x-www-form-urlencoded", 415, "content-type", "send"),
    ("POST", "/v1/nothing", "application/json", 404, "path", "no route /v1/nothing"),
    ("GET", "/v1/classify", None, 405, "method", "GET is not allowed here"),
]


@pytest.mark.parametrize(
    ("method", "path", "kind", "status", "field", "message"),
    RAW,
    ids=[f"{r[4]}:{r[2]}" for r in RAW],
)
def test_wrong_content_type_path_or_method_is_a_4xx_naming_it(
    url, method, path, kind, status, field, message
):
    headers = {"content-type": kind} if kind else {}
    r = requests.request(
        method, url + path, data=json.dumps({"texts": TEXTS}), headers=headers, timeout=30
    )
    assert r.status_code == status, r.text
    assert r.json()["field"] == field and message in r.json()["error"], r.text


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_fuzzed_requests_get_no_5xx_and_every_4xx_names_its_field(url, mode):
    """Requests schemathesis makes from the app's own OpenAPI schema, valid ones and ones
    that break it: no 5xx, and every 4xx is raylm's ``{error, field}`` body. (By hand
    with hypothesis: schemathesis' pytest fixture loader does not run under pytest 9.)"""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/classify", "/v1/generate", "/healthz"}
    seen: dict[int, int] = {}
    for op in operations:

        @hypothesis.settings(
            max_examples=20,
            deadline=None,
            database=None,
            suppress_health_check=list(hypothesis.HealthCheck),
        )
        @hypothesis.given(case=op.as_strategy(schemathesis.GenerationMode(mode)))
        def check(case) -> None:
            response = case.call(timeout=60)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if response.status_code >= 400:
                body = response.json()
                assert set(body) == {"error", "field"}, (case.as_curl_command(), body)
                assert body["error"].startswith(body["field"] + ": ")

        try:
            check()
        except hypothesis.errors.Unsatisfiable:  # no input of GET /healthz can be invalid
            assert mode == "negative" and op.method.upper() == "GET", op.path
    # The fuzzing reached the models and their checks, not only the router.
    answered = any(c < 300 for c in seen) if mode == "positive" else any(c >= 400 for c in seen)
    assert answered, seen


def closed_loop(url: str, body: dict, concurrency: int, seconds: float) -> list[tuple]:
    """``concurrency`` clients each sending the next request when the last is answered,
    for ``seconds``: (start time, status, latency s) of each request."""
    import asyncio

    import aiohttp

    async def run() -> list[tuple]:
        done: list[tuple] = []
        end = time.time() + seconds
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session:

            async def client() -> None:
                while time.time() < end:
                    t0 = time.time()
                    try:
                        async with session.post(url, json=body) as r:
                            await r.read()
                            done.append((t0, r.status, time.time() - t0))
                    except aiohttp.ClientError:
                        done.append((t0, 0, time.time() - t0))

            await asyncio.gather(*(client() for _ in range(concurrency)))
        return done

    return asyncio.run(run())


def replicas(app: str) -> list[int]:
    """The pids of the app's live replica processes (Ray titles them ServeReplica:APP:...)."""
    import psutil

    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        title = " ".join(p.info["cmdline"] or [])
        if f"ServeReplica:{app}:" in title and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p.info["pid"])
    return found


def test_soak_scales_out_and_back_and_survives_a_killed_replica(url, model_dirs):
    """A one-model app with autoscaling to 2 (short delays), under 32 concurrent clients:

    - a 15 s soak: every request answered 200, and the first replica's RSS grows by at
      most 5 % over it (measured after a warm-up at the same load);
    - the load takes it to 2 replicas; a replica killed mid-load is replaced, and
      requests sent 2 s after the kill on all succeed;
    - idle again, it returns to 1 replica."""
    import psutil
    from ray import serve

    from raylm.serve import build_app

    app = build_app(
        {
            "models": {"cls": str(model_dirs["cls"])},
            "cpus_per_replica": 0.25,
            "autoscaling": {
                "min_replicas": 1,
                "max_replicas": 2,
                "target_ongoing_requests": 2,
                "upscale_delay_s": 1,
                "downscale_delay_s": 2,
                "look_back_period_s": 2,  # Serve's own key, passed through (default 30)
            },
        }
    )
    serve.run(app, name="soak", route_prefix="/soak")
    target, body = url + "/soak/v1/classify", {"texts": TEXTS[:1]}
    try:
        (first,) = replicas("soak")
        closed_loop(target, body, 32, 2)  # warm-up: connections, batch queues, allocator
        rss0 = psutil.Process(first).memory_info().rss
        soak = closed_loop(target, body, 32, 15)
        rss1 = psutil.Process(first).memory_info().rss
        statuses = {status for _, status, _ in soak}
        assert statuses == {200}, statuses
        ms = sorted(1000 * lat for _, _, lat in soak)
        p50, p99 = ms[len(ms) // 2], ms[-len(ms) // 100]
        print(f"soak: {len(ms)} requests, p50 {p50:.1f} ms, p99 {p99:.1f} ms")
        assert rss1 <= 1.05 * rss0, (rss0, rss1)
        assert len(replicas("soak")) == 2  # scaled out under the load

        killed = {}

        def kill_one() -> None:
            time.sleep(2)
            victim = replicas("soak")[0]
            os.kill(victim, signal.SIGKILL)  # the replica's actor process dies
            killed.update(pid=victim, at=time.time())

        with ThreadPoolExecutor(1) as pool:
            pool.submit(kill_one)
            during = closed_loop(target, body, 32, 7)
        assert killed, "no replica was killed"
        late = [status for t0, status, _ in during if t0 > killed["at"] + 2]
        assert late and set(late) == {200}, sorted(set(late))
        deadline = time.time() + 60
        while killed["pid"] in replicas("soak") or len(replicas("soak")) != 1:
            assert time.time() < deadline, replicas("soak")  # replaced, then scaled back
            time.sleep(1)
        assert post(url, "/soak/v1/classify", body).status_code == 200
    finally:
        serve.delete("soak")


@contextlib.contextmanager
def deployed(config: dict, name: str):
    """An exported Serve config deployed as `serve deploy` does, running until the block ends."""
    from ray import serve
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    _get_global_client().deploy_apps(ServeDeploySchema.model_validate(config), _blocking=True)
    try:
        deadline = time.time() + 120
        while serve.status().applications[name].status != "RUNNING":
            assert time.time() < deadline, serve.status().applications[name]
            time.sleep(1)
        yield
    finally:
        serve.delete(name)


def test_exported_config_deploys_the_same_application(url, model_dirs, tmp_path):
    """serve.export writes a config Serve's own schema accepts; deploying it (what
    `serve deploy` does) gives an application that answers like the one started here."""

    path = tmp_path / "serve.yaml"
    summary = raylm.run(
        "serve",
        serve_overrides(
            {m: model_dirs[m] for m in ("cls", "ner")},  # several models: one deployment each
            f"serve.export={path}",
            "serve.app_name=exported",
            "serve.route_prefix=/exported",
            "serve.autoscaling.max_replicas=2",
        ),
    )
    assert summary["export"] == str(path)
    config = yaml.safe_load(path.read_text())
    app = config["applications"][0]
    assert app["import_path"] == "raylm.serve:build_app"
    assert set(app["args"]["models"]) == {"cls", "ner"}
    deployment = next(d for d in app["deployments"] if d["name"] == "model-cls")
    assert deployment["autoscaling_config"]["max_replicas"] == 2
    assert deployment["ray_actor_options"] == {"num_cpus": 0.25, "num_gpus": 0.0}

    with deployed(config, "exported"):
        body = {"texts": TEXTS}
        exported = post(url, "/exported/v1/classify", body).json()["results"]
        assert exported == post(url, "/v1/classify", body).json()["results"]


def test_bearer_token_and_cors_from_an_exported_config(url, model_dirs, tmp_path):
    """serve.auth_token_file + serve.cors_origins, deployed from the exported config as a
    RayService would: the file's token is wanted on every route but /healthz (401 without,
    403 wrong), never written to the config or shown by /v1/models; CORS headers go to
    the configured origin only, and the app without these settings sends none."""

    token = "s3cr3t-" + os.urandom(8).hex()
    (tmp_path / "token").write_text(token + "\n")
    origin = "https://app.example"
    path = tmp_path / "serve.yaml"
    raylm.run(
        "serve",
        [
            f"serve.models=[cls:{model_dirs['cls']}]",
            f"serve.port={PORT}",
            "serve.cpus_per_replica=0.25",
            f"serve.auth_token_file={tmp_path / 'token'}",
            f"serve.cors_origins=[{origin}]",
            f"serve.export={path}",
            "serve.app_name=secure",
            "serve.route_prefix=/secure",
        ],
    )
    assert token not in path.read_text()
    config = yaml.safe_load(path.read_text())
    assert config["applications"][0]["args"]["auth_token_file"] == str(tmp_path / "token")
    with deployed(config, "secure"):
        base = url + "/secure"
        body = {"texts": TEXTS}
        assert requests.get(base + "/healthz", timeout=30).status_code == 200  # open

        missing = post(base, "/v1/classify", body)
        assert missing.status_code == 401 and missing.json()["field"] == "authorization"
        assert missing.headers["WWW-Authenticate"] == "Bearer"
        wrong = post(base, "/v1/classify", body, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 403 and wrong.json()["field"] == "authorization"
        assert token not in missing.text + wrong.text

        auth = {"Authorization": f"Bearer {token}"}
        ok = post(base, "/v1/classify", body, headers={**auth, "Origin": origin})
        assert ok.status_code == 200
        assert ok.json()["results"] == post(url, "/v1/classify", body).json()["results"]
        assert ok.headers["Access-Control-Allow-Origin"] == origin
        models = requests.get(base + "/v1/models", headers=auth, timeout=30)
        assert models.status_code == 200 and token not in models.text

        # A browser's preflight (no credentials), from the allowed origin and another.
        preflight = {"Access-Control-Request-Method": "POST", "Origin": origin}
        pre = requests.options(base + "/v1/classify", headers=preflight, timeout=30)
        assert pre.status_code == 200 and pre.headers["Access-Control-Allow-Origin"] == origin
        other = {**preflight, "Origin": "https://elsewhere.example"}
        assert requests.options(base + "/v1/classify", headers=other, timeout=30).status_code == 400
        stranger = post(base, "/v1/classify", body, headers={**auth, "Origin": other["Origin"]})
        assert "Access-Control-Allow-Origin" not in stranger.headers
        plain = post(url, "/v1/classify", body, headers={"Origin": origin})
        assert plain.status_code == 200 and "Access-Control-Allow-Origin" not in plain.headers


def serve_command(*overrides: str) -> subprocess.Popen:
    """``raylm serve`` on its own embedded cluster, in its own process group."""
    return subprocess.Popen(
        [sys.executable, "-m", "raylm", "serve", *overrides, "ray.num_cpus=1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "RAY_ADDRESS": ""},
        start_new_session=True,
    )


def test_sigterm_finishes_requests_in_flight_and_leaves_no_ray_process(model_dirs):
    """The CLI on its own embedded cluster: URL printed, requests answered. SIGTERM (what
    Kubernetes, Docker and systemd send) while a generation is in flight: that request
    is answered, the process exits 0 within 30 s with no native stack dump, and every
    process the command started (raylet, agents, workers, HAProxy) is gone."""
    import psutil

    port = PORT + 1
    proc = serve_command(
        f"model_dir={model_dirs['gpt']}", f"serve.port={port}", "serve.cpus_per_replica=0.5"
    )
    lines = []
    try:
        deadline = time.time() + 180
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving at "):
                break
            assert time.time() < deadline, "".join(lines)
        assert f"serving at http://127.0.0.1:{port} " in lines[-1], "".join(lines)
        assert any(f"gpt: clm model at http://127.0.0.1:{port}/v1/generate" in x for x in lines)
        started = psutil.Process(proc.pid).children(recursive=True)
        assert len(started) > 3  # the cluster's processes
        body = {"prompt": "the", "max_new_tokens": 256, "temperature": 0}
        with ThreadPoolExecutor(1) as pool:
            t0 = time.time()
            first = post(f"http://127.0.0.1:{port}", "/v1/generate", body)
            assert first.status_code == 200, first.text  # once a 422 (see the notes)
            one = time.time() - t0
            in_flight = pool.submit(post, f"http://127.0.0.1:{port}", "/v1/generate", body)
            time.sleep(one / 4)
            proc.send_signal(signal.SIGTERM)
            t0 = time.time()
            rest, _ = proc.communicate(timeout=60)
            took = time.time() - t0
            answered = in_flight.result()
        assert proc.returncode == 0 and took < 30, (took, rest)
        assert answered.status_code == 200 and answered.json()["text"], answered.text
        assert "shutting down" in rest and "SIGTERM received" not in rest, rest
        deadline = time.time() + 10
        while any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in started):
            left = [p.info for p in psutil.process_iter(["pid", "name"]) if p in started]
            assert time.time() < deadline, left
            time.sleep(0.5)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ctrl_c_before_the_app_is_ready_is_one_line(model_dirs):
    """Ctrl-C while the embedded cluster starts: one line, and the exit of an interrupted
    process (130, or death by SIGINT when it lands during Python's own shutdown: a shell
    shows 130 for both)."""
    proc = serve_command(f"model_dir={model_dirs['cls']}", f"serve.port={PORT + 2}")
    try:
        first = proc.stdout.readline()  # Ray's first line: the cluster is starting
        proc.send_signal(signal.SIGINT)
        out = first + proc.communicate(timeout=60)[0]
        assert proc.returncode in (130, -signal.SIGINT), out
        assert "Traceback" not in out and "KeyboardInterrupt" not in out, out
        assert out.strip().splitlines()[-1] == "raylm serve: interrupted", out
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


SERVE_BAD = [
    ([], "model_dir", "give model_dir=DIR or serve.models=[name:DIR,...]"),
    (["model_dir=/nonexistent/model"], "model_dir", "no such directory: /nonexistent/model"),
    (["serve.models=[cls]"], "serve.models", "entries are name:DIR"),
    (["serve.num_replicas=0"], "serve.num_replicas", "must be >= 1"),
    (["serve.route_prefix=api"], "serve.route_prefix", "must start with /"),
    (["serve.ingress=nginx"], "serve.ingress", "is one of proxy, throughput, haproxy"),
    (
        ["serve.autoscaling.max_replicas=2", "serve.autoscaling.min_replicas=3"],
        "serve.autoscaling.min_replicas",
        "must be in [0, serve.autoscaling.max_replicas=2]",
    ),
]


@pytest.mark.parametrize(("overrides", "key", "message"), SERVE_BAD, ids=[b[1] for b in SERVE_BAD])
def test_bad_serve_config_names_the_key(overrides, key, message, tmp_path):
    # The checks `raylm serve` and `--dry-run` make here (an export alone leaves a model
    # path that does not exist on this machine to the cluster it is for).
    from raylm.api import check

    with pytest.raises(raylm.ConfigError) as err:
        check("serve", [f"serve.export={tmp_path / 'serve.yaml'}", *overrides])
    assert err.value.key == key and message in err.value.message
    assert not (tmp_path / "serve.yaml").exists()


def test_a_token_that_is_not_there_names_its_key(model_dirs, tmp_path, monkeypatch):
    """Served here, the token must be here: an unset variable, a missing or empty file,
    or both keys given, each one line naming the key."""
    from raylm.api import check

    monkeypatch.delenv("RAYLM_NO_SUCH_TOKEN", raising=False)
    (tmp_path / "empty").write_text("\n")
    cases = [
        (["serve.auth_token_env=RAYLM_NO_SUCH_TOKEN"], "serve.auth_token_env", "is not set"),
        ([f"serve.auth_token_file={tmp_path / 'nope'}"], "serve.auth_token_file", "missing"),
        ([f"serve.auth_token_file={tmp_path / 'empty'}"], "serve.auth_token_file", "empty"),
        (
            ["serve.auth_token_env=HOME", f"serve.auth_token_file={tmp_path / 'empty'}"],
            "serve.auth_token_env",
            "give one of them",
        ),
    ]
    for overrides, key, message in cases:
        with pytest.raises(raylm.ConfigError) as err:
            check("serve", [f"model_dir={model_dirs['cls']}", *overrides])
        assert err.value.key == key and message in err.value.message, err.value


def test_duplicate_model_names_and_wrong_task_dirs(model_dirs, tmp_path):
    twice = f"serve.models=[a:{model_dirs['cls']},a:{model_dirs['ner']}]"
    with pytest.raises(raylm.ConfigError, match="model name 'a' is given twice"):
        raylm.run("serve", [twice, f"serve.export={tmp_path / 's.yaml'}"])
    with pytest.raises(raylm.ConfigError, match="is a clm model, neither a sequence nor a token"):
        raylm.run(
            "predict",
            [f"model_dir={model_dirs['gpt']}", f"input={tmp_path}/x.jsonl", "output=o.jsonl"],
        )


def test_taken_port_is_one_line_before_any_cluster_starts(model_dirs):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "raylm",
                "serve",
                f"model_dir={model_dirs['cls']}",
                f"serve.port={port}",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ, "RAY_ADDRESS": ""},
        )
    assert out.returncode == 2
    assert out.stderr.strip() == (
        f"raylm serve: error: serve.port: 127.0.0.1:{port} is not free "
        "(Address already in use); pick another serve.port"
    )
