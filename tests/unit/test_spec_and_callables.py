from __future__ import annotations

import sys
import threading
import types

import re

import pytest

from airflow_provider_raydatallm.exceptions import RayLLMConfigError
from airflow_provider_raydatallm.job import callables
from airflow_provider_raydatallm.job.spec import JobSpec, OutputSpec, infer_input_format
from airflow_provider_raydatallm.operators import _submission as sub

CHOICES = ["A", "B"]


def uses_a_global(row):
    return {"choices": CHOICES, "x": row["x"]}


def test_a_function_from_a_dag_file_travels_by_value():
    # Airflow imports DAG files under names the cluster cannot import: simulate one.
    module = types.ModuleType("unusual_prefix_abc123_my_dag")
    exec("K = 41\ndef pre(row):\n    return {'y': row['x'] + K}\n", module.__dict__)
    sys.modules[module.__name__] = module
    try:
        spec = callables.pack(module.pre, "preprocess")
    finally:
        del sys.modules[module.__name__]
    assert spec.pickled and spec.python_version == f"{sys.version_info.major}.{sys.version_info.minor}"
    assert callables.load(spec)({"x": 1}) == {"y": 42}  # loads with the module gone


def test_lambdas_and_import_paths():
    assert callables.load(callables.pack(lambda row: {"n": len(row)}, "postprocess"))({"a": 1}) == {"n": 1}
    spec = callables.pack("json:dumps", "postprocess")
    assert spec.import_path == "json:dumps" and callables.load(spec)({"a": 1}) == '{"a": 1}'
    assert callables.pack(None, "preprocess") is None


def test_an_unshippable_callable_is_named_before_submission():
    lock = threading.Lock()

    def holds_a_lock(row):
        with lock:
            return row

    with pytest.raises(callables.CallableShippingError, match="preprocess .*holds_a_lock.* cannot be shipped"):
        callables.pack(holds_a_lock, "preprocess")


def test_bad_import_path_and_missing_module_are_clear():
    with pytest.raises(callables.CallableShippingError, match="not 'package.module:function'"):
        callables.pack("not a path", "preprocess")
    spec = callables.pack("no_such_pkg.mod:fn", "preprocess")
    with pytest.raises(callables.CallableShippingError, match="cannot be imported on the cluster"):
        callables.load(spec)


def test_python_minor_version_mismatch_names_both_versions():
    spec = callables.pack(uses_a_global, "preprocess").model_copy(update={"python_version": "3.9"})
    with pytest.raises(callables.CallableShippingError, match=r"Python 3\.9 .* cluster runs Python 3\.\d+"):
        callables.load(spec)


def test_processor_spec_from_dict_normalizes_the_seed_model_name():
    spec = sub.processor_spec({"type": "vLLMEngineProcessorConfig", "model": "m", "concurrency": 2}, "t")
    assert spec.kwargs == {"model_source": "m", "concurrency": 2}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"model_source": "m"}, "needs a 'type' key"),
        ({"type": "NoSuchConfig", "x": 1}, "not one of"),
        ({"type": "HttpRequestProcessorConfig", "qps": 1}, "'url' is a required property"),
        ({"type": "vLLMEngineProcessorConfig", "model_source": "m", "fn": object()}, "'fn' is not JSON-serializable"),
        (42, "must be a ray.data.llm processor config or a dict"),
    ],
)
def test_processor_spec_errors_name_task_and_field(config, message):
    with pytest.raises(RayLLMConfigError, match=message) as err:
        sub.processor_spec(config, "classify")
    assert "task classify" in str(err.value)


def test_processor_spec_from_a_config_object_keeps_only_set_fields():
    from pydantic import BaseModel

    class vLLMEngineProcessorConfig(BaseModel):  # stands in for Ray's class: same name and API
        model_source: str
        batch_size: int = 64

    spec = sub.processor_spec(vLLMEngineProcessorConfig(model_source="m"), "t")
    assert spec.type == "vLLMEngineProcessorConfig" and spec.kwargs == {"model_source": "m"}


def test_submission_ids_are_deterministic_url_safe_and_distinct():
    run = ("daily sentiment", "classify", "scheduled__2026-11-22T00:00:00+00:00")
    a = sub.submission_base(*run, -1, namespace="prod")
    assert a == sub.submission_base(*run, -1, namespace="prod")
    assert all(c.isalnum() or c in "-_." for c in a)
    assert a != sub.submission_base(*run, 3, namespace="prod")
    assert a != sub.submission_base(*run, -1, namespace="staging")
    assert sub.submission_id(a, 2).endswith("-a2")


def test_output_spec_defaults_errors_under_the_output():
    assert OutputSpec(uri="s3://b/out/").error_uri == "s3://b/out/_errors"


def test_input_format_inference():
    assert infer_input_format(["a/x.csv", "b/y.CSV"]) == "csv"
    assert infer_input_format(["s3://b/p.jsonl.gz"]) == "jsonl"
    with pytest.raises(ValueError, match="pass input_format"):
        infer_input_format(["a.csv", "b.parquet"])


def test_job_spec_refuses_another_version():
    base = {
        "input": {"uris": ["a.csv"], "format": "csv"},
        "output": {"uri": "out"},
        "processor": {"type": "vLLMEngineProcessorConfig", "kwargs": {"model_source": "m"}},
    }
    assert JobSpec.model_validate(base).spec_version == 1
    with pytest.raises(ValueError, match="same airflow-provider-raydatallm on both sides"):
        JobSpec.model_validate({**base, "spec_version": 99})


def test_secret_like_env_vars_in_runtime_env_are_refused():
    env = {"env_vars": {"OPENAI_API_KEY": "sk-1", "HF_TOKEN": "hf-2", "REGION": "eu"}}
    with pytest.raises(RayLLMConfigError, match="task t: runtime_env env_vars HF_TOKEN, OPENAI_API_KEY look like secrets"):
        sub.refuse_secret_env(env, "t")
    sub.refuse_secret_env({"env_vars": {"REGION": "eu", "VLLM_USE_V1": "1"}}, "t")


def _endpoint_conn(**extra):
    from types import SimpleNamespace

    return SimpleNamespace(host="https://api.openai.com", port=None, schema=None, password="sk-secret-123",
                           extra_dejson=extra)  # fmt: skip


def test_endpoint_connection_ships_the_key_and_headers_outside_the_spec():
    processor = sub.processor_spec({"type": "HttpRequestProcessorConfig", "qps": 2}, "ask", url_from_connection=True)
    updated, shipped = sub.with_endpoint_connection(processor, _endpoint_conn(headers={"OpenAI-Organization": "org-1"}), "ask")
    assert updated.kwargs["url"] == "https://api.openai.com/v1/chat/completions"
    assert shipped == {"api_key": "sk-secret-123", "header_0": "org-1"}
    assert updated.secret_headers["Authorization"].model_dump() == {"source": "shipped", "name": "api_key", "prefix": "Bearer "}
    assert updated.secret_headers["OpenAI-Organization"].name == "header_0"
    assert "sk-secret-123" not in updated.model_dump_json() and "org-1" not in updated.model_dump_json()


def test_endpoint_key_that_lives_on_the_cluster_is_only_named():
    processor = sub.processor_spec({"type": "HttpRequestProcessorConfig"}, "ask", url_from_connection=True)
    updated, shipped = sub.with_endpoint_connection(processor, _endpoint_conn(api_key_env="OPENAI_API_KEY"), "ask")
    assert shipped == {}
    assert updated.secret_headers["Authorization"].model_dump() == {"source": "env", "name": "OPENAI_API_KEY",
                                                                  "prefix": "Bearer "}  # fmt: skip


@pytest.mark.parametrize(
    ("host", "port", "schema", "path", "url"),
    [
        ("127.0.0.1", 8000, "http", None, "http://127.0.0.1:8000/v1/chat/completions"),
        ("http://127.0.0.1:8011/", None, None, None, "http://127.0.0.1:8011/v1/chat/completions"),
        ("https://x.example.com/v1/chat/completions", None, None, None, "https://x.example.com/v1/chat/completions"),
        ("https://x.example.com", None, None, "/openai/v1/chat/completions", "https://x.example.com/openai/v1/chat/completions"),
    ],
)
def test_endpoint_url_forms(host, port, schema, path, url):
    assert sub.endpoint_url(host, port, schema, path) == url


@pytest.mark.parametrize(
    ("output", "error", "fragment"),
    [
        ("/data/in", None, "output_uri '/data/in' contains input_uri '/data/in/posts.jsonl'"),
        ("file:///data/in/", None, "contains input_uri"),
        ("/data/in/posts.jsonl", None, "output_uri '/data/in/posts.jsonl' is input_uri"),
        ("/data/in/posts.jsonl/out", None, "is inside input_uri"),
        ("/data/out", "/data/out", "error_output_uri '/data/out' is output_uri"),
        ("/data/out", "/data", "error_output_uri '/data' contains output_uri '/data/out'"),
        ("/data/out", "/data/in/errs/../", "error_output_uri '/data/in/errs/../' contains input_uri"),
    ],
)
def test_outputs_that_would_replace_the_input_or_each_other_are_refused(output, error, fragment):
    from airflow_provider_raydatallm.job.spec import RunIdentity
    from airflow_provider_raydatallm.operators import RayLLMBatchOperator

    op = RayLLMBatchOperator(
        task_id="t", processor_config={"type": "vLLMEngineProcessorConfig", "model_source": "m"},
        input_uri="/data/in/posts.jsonl", output_uri=output, error_output_uri=error,
    )  # fmt: skip
    with pytest.raises(RayLLMConfigError, match=re.escape(fragment)):
        op.build_spec(RunIdentity(dag_id="d", task_id="t", run_id="r"))


def test_spec_hash_ignores_the_try_and_sees_the_prompt():
    from airflow_provider_raydatallm.job.spec import RunIdentity
    from airflow_provider_raydatallm.operators import RayLLMBatchOperator, _jobs

    def build(prompt: str, try_number: int):
        op = RayLLMBatchOperator(
            task_id="t", processor_config={"type": "vLLMEngineProcessorConfig", "model_source": "m"},
            preprocess=lambda row, p=prompt: {"messages": [{"role": "user", "content": p}]},
            input_uri="/data/in.jsonl", output_uri="/data/out",
        )  # fmt: skip
        return _jobs.spec_hash(op.build_spec(RunIdentity(dag_id="d", task_id="t", run_id="r", try_number=try_number)))

    assert build("a", 1) == build("a", 2) != build("b", 1)


def test_processor_config_is_rendered_but_not_the_templates_inside_it():
    from airflow_provider_raydatallm.operators import RayLLMBatchOperator

    chat_template = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
    op = RayLLMBatchOperator(
        task_id="t", input_uri="/data/{{ ds }}.jsonl", output_uri="/out/{{ ds }}",
        processor_config={"type": "vLLMEngineProcessorConfig", "model_source": "/models/{{ params.model }}",
                          "chat_template_stage": {"enabled": True, "chat_template": chat_template}},
    )  # fmt: skip
    op.render_template_fields({"ds": "2026-11-22", "params": {"model": "smol"}})
    assert op.processor_config["model_source"] == "/models/smol" and op.input_uri == "/data/2026-11-22.jsonl"
    assert op.processor_config["chat_template_stage"]["chat_template"] == chat_template


def test_a_concurrency_range_given_as_a_tuple_passes_the_schema_check():
    from airflow_provider_raydatallm import schemas

    kwargs = {"model_source": "m", "concurrency": (2, 4), "accelerator_type": "L4"}
    assert schemas.problems("vLLMEngineProcessorConfig", kwargs) == []
    assert any("concurrency" in p for p in schemas.problems("vLLMEngineProcessorConfig", {**kwargs, "concurrency": (4, 2)}))


def test_a_helper_beside_a_script_travels_by_value_without_the_script(tmp_path, monkeypatch):
    # benchmarks/scale.py (run as __main__) ships functions of benchmarks/pipeline.py: the
    # script itself sits in the same folder and must not be registered by value.
    (tmp_path / "helper_mod_x1.py").write_text("def pre(row):\n    return {'y': row['x'] * 2}\n")
    script = types.ModuleType("__main__")
    script.__file__ = str(tmp_path / "script.py")
    monkeypatch.setitem(sys.modules, "__main__", script)
    monkeypatch.syspath_prepend(str(tmp_path))
    import helper_mod_x1

    spec = callables.pack(helper_mod_x1.pre, "preprocess")
    del sys.modules["helper_mod_x1"]
    assert spec.pickled and callables.load(spec)({"x": 4}) == {"y": 8}


def test_a_dag_file_run_as_a_script_ships_the_helpers_beside_it(tmp_path, monkeypatch):
    # `python my_dag.py` with dag.test() at the bottom: the callables live in __main__ and
    # use a module beside the file, which the cluster cannot import.
    (tmp_path / "helper_mod_x2.py").write_text("def label(text):\n    return text.upper()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    script = types.ModuleType("__main__")
    script.__file__ = str(tmp_path / "my_dag.py")
    exec("import helper_mod_x2\ndef post(row):\n    return {'label': helper_mod_x2.label(row['t'])}\n", script.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", script)
    spec = callables.pack(script.post, "postprocess")
    del sys.modules["helper_mod_x2"]
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p != str(tmp_path)])
    assert callables.load(spec)({"t": "ok"}) == {"label": "OK"}
