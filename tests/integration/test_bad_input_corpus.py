"""Bad inputs a real user might write, one row each: every one gets a clear error before
anything is submitted, naming the argument (and the task). Rows marked ``"init"`` fail when
the DAG file is parsed; the others fail in ``execute`` against the real cluster, and the
Ray job list is checked unchanged after each.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest

from airflow_provider_raydatallm.exceptions import RayLLMConfigError
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.operators import RayLLMBatchOperator

pytestmark = pytest.mark.integration

VLLM = {"type": "vLLMEngineProcessorConfig", "model_source": "m"}
HTTP = {"type": "HttpRequestProcessorConfig", "url": "http://127.0.0.1:9/v1/chat/completions"}
GOOD: dict[str, Any] = {"processor_config": VLLM, "input_uri": "/data/in/posts.jsonl", "output_uri": "/data/out"}


def _cfg(**extra: Any) -> dict[str, Any]:
    return {**VLLM, **extra}


BIG = list(range(3_000_000))


def _big_preprocess(row: dict[str, Any]) -> dict[str, Any]:
    return {"messages": [{"role": "user", "content": str(len(BIG))}]}


# (id, overrides, phase, fragment the message must hold)
CASES: list[tuple[str, dict[str, Any], str, str]] = [
    # processor_config: Ray's schema, plus the bounds Ray leaves to run time
    ("config-typo", {"processor_config": _cfg(batchsize=64)}, "execute", "has no field 'batchsize': did you mean 'batch_size'?"),
    ("config-typo-concurrency", {"processor_config": _cfg(concurency=2)}, "execute", "did you mean 'concurrency'?"),
    ("config-typo-engine", {"processor_config": _cfg(engine_kwarg={})}, "execute", "did you mean 'engine_kwargs'?"),
    ("batch-size-0", {"processor_config": _cfg(batch_size=0)}, "execute", "processor_config.batch_size: must be >= 1, got 0"),
    ("batch-size-negative", {"processor_config": _cfg(batch_size=-5)}, "execute", "batch_size: must be >= 1"),
    ("batch-size-string", {"processor_config": _cfg(batch_size="64")}, "execute", "processor_config.batch_size: '64' is not of type 'integer'"),
    ("batch-size-float", {"processor_config": _cfg(batch_size=1.5)}, "execute", "processor_config.batch_size"),
    ("concurrency-negative", {"processor_config": _cfg(concurrency=-1)}, "execute", "processor_config.concurrency: must be >= 1"),
    ("concurrency-zero", {"processor_config": _cfg(concurrency=0)}, "execute", "processor_config.concurrency"),
    ("concurrency-range-reversed", {"processor_config": _cfg(concurrency=[4, 2])}, "execute", "needs 1 <= m <= n, got (4, 2)"),
    ("concurrency-range-zero", {"processor_config": _cfg(concurrency=[0, 2])}, "execute", "needs 1 <= m <= n"),
    ("concurrency-three", {"processor_config": _cfg(concurrency=[1, 2, 3])}, "execute", "processor_config.concurrency"),
    ("engine-kwargs-string", {"processor_config": _cfg(engine_kwargs="tp=2")}, "execute", "processor_config.engine_kwargs: 'tp=2' is not of type 'object'"),
    ("no-model", {"processor_config": {"type": "vLLMEngineProcessorConfig"}}, "execute", "'model_source' is a required property"),
    ("no-type", {"processor_config": {"model_source": "m"}}, "execute", "needs a 'type' key"),
    ("unknown-type", {"processor_config": {"type": "vLLMConfig", "model_source": "m"}}, "execute", "is not one of"),
    ("http-no-url", {"processor_config": {"type": "HttpRequestProcessorConfig"}}, "execute", "'url' is a required property"),
    ("http-qps-0", {"processor_config": {**HTTP, "qps": 0}}, "execute", "processor_config.qps: must be > 0"),
    ("http-retries-negative", {"processor_config": {**HTTP, "max_retries": -1}}, "execute", "processor_config.max_retries: must be >= 0"),
    ("http-headers-list", {"processor_config": {**HTTP, "headers": ["a"]}}, "execute", "processor_config.headers"),
    ("serve-no-deployment", {"processor_config": {"type": "ServeDeploymentProcessorConfig"}}, "execute", "'deployment_name' is a required property"),
    ("config-not-json", {"processor_config": _cfg(fn=object())}, "execute", "'fn' is not JSON-serializable"),
    ("config-int", {"processor_config": 42}, "init", "processor_config=42: must be a ray.data.llm processor config"),
    ("config-list", {"processor_config": [VLLM]}, "init", "processor_config"),
    ("config-string", {"processor_config": "vLLMEngineProcessorConfig"}, "execute", "rendered to a string"),
    # numbers
    ("poll-interval-negative", {"poll_interval": -1}, "init", "poll_interval=-1: must be a number > 0"),
    ("poll-interval-zero", {"poll_interval": 0}, "init", "poll_interval=0: must be a number > 0"),
    ("poll-interval-string", {"poll_interval": "10"}, "init", "poll_interval='10'"),
    ("timeout-negative", {"timeout": -5}, "init", "timeout=-5.0: must be a number > 0"),
    ("timeout-zero", {"timeout": 0}, "init", "timeout=0.0"),
    ("pending-timeout-negative", {"pending_timeout": -1}, "init", "pending_timeout=-1.0"),
    ("max-error-ratio-big", {"max_error_ratio": 1.5}, "init", "max_error_ratio=1.5: must be a number from 0 to 1"),
    ("max-error-ratio-negative", {"max_error_ratio": -0.1}, "init", "max_error_ratio=-0.1"),
    ("max-error-ratio-percent", {"max_error_ratio": "10%"}, "init", "max_error_ratio='10%'"),
    ("limit-float", {"limit": 2.5}, "execute", "limit=2.5: must be a positive integer"),
    ("limit-word", {"limit": "ten"}, "execute", "limit='ten': must be a positive integer"),
    ("limit-negative", {"limit": -3}, "execute", "limit=-3"),
    ("limit-zero", {"limit": 0}, "execute", "limit=0"),
    ("limit-bool", {"limit": True}, "execute", "limit=True"),
    ("partitions-zero", {"num_partitions": 0}, "execute", "num_partitions=0: must be a positive integer"),
    ("partitions-string", {"num_partitions": "two"}, "execute", "num_partitions='two'"),
    ("cpus-negative", {"entrypoint_num_cpus": -1}, "init", "entrypoint_num_cpus=-1"),
    ("gpus-string", {"entrypoint_num_gpus": "1"}, "init", "entrypoint_num_gpus='1'"),
    ("resources-negative", {"entrypoint_resources": {"accelerator_type:L4": -1}}, "init", "entrypoint_resources['accelerator_type:L4']=-1"),
    ("resources-list", {"entrypoint_resources": ["GPU"]}, "init", "entrypoint_resources=['GPU']: must be a dict"),
    # URIs and formats
    ("input-empty", {"input_uri": ""}, "execute", "input_uri='': is empty"),
    ("input-int", {"input_uri": 5}, "execute", "input_uri=5: must be a URI string or a non-empty list"),
    ("input-empty-list", {"input_uri": []}, "execute", "input_uri=[]"),
    ("input-list-with-empty", {"input_uri": ["/data/a.csv", ""]}, "execute", "input_uri='': is empty"),
    ("input-unknown-scheme", {"input_uri": "s4://bucket/x.csv"}, "execute", "scheme 's4' is not one of"),
    ("input-whitespace", {"input_uri": " /data/in.csv"}, "execute", "leading or trailing whitespace"),
    ("input-unrendered", {"input_uri": "/data/{{ ds }}.csv"}, "execute", "still holds Jinja"),
    ("input-no-extension", {"input_uri": "/data/in/posts"}, "execute", "cannot infer the input format"),
    ("input-format-bad", {"input_format": "xlsx"}, "execute", "input_format='xlsx': must be one of csv, parquet, json, jsonl"),
    ("input-columns-string", {"input_columns": "Company"}, "execute", "input_columns='Company': must be a non-empty list"),
    ("input-columns-empty", {"input_columns": []}, "execute", "input_columns=[]"),
    ("output-empty", {"output_uri": ""}, "execute", "output_uri='': is empty"),
    ("output-none", {"output_uri": None}, "execute", "output_uri=None: output_uri or output_table is required"),
    ("output-unknown-scheme", {"output_uri": "ftp://host/out"}, "execute", "scheme 'ftp'"),
    ("output-table-not-a-table", {"output_table": {"table": "a.b"}}, "init", "output_table must be an IcebergTable or a DeltaTable"),
    ("output-format-bad", {"output_format": "xlsx"}, "execute", "output_format='xlsx': must be one of parquet, jsonl, csv"),
    ("output-is-input-folder", {"output_uri": "/data/in"}, "execute", "output_uri '/data/in' contains input_uri"),
    ("output-inside-input", {"input_uri": "/data/in", "input_format": "csv", "output_uri": "/data/in/out"}, "execute", "is inside input_uri"),
    ("error-is-output", {"error_output_uri": "/data/out"}, "execute", "error_output_uri '/data/out' is output_uri"),
    ("error-contains-output", {"error_output_uri": "/data"}, "execute", "contains output_uri"),
    ("error-empty", {"error_output_uri": ""}, "execute", "error_output_uri='': is empty"),
    # runtime_env, metadata, names, flags, callables
    ("runtime-env-string", {"runtime_env": "pip: [x]"}, "execute", "runtime_env='pip: [x]': must be a dict"),
    ("runtime-env-vars-list", {"runtime_env": {"env_vars": ["A=1"]}}, "execute", "runtime_env['env_vars']=['A=1']: must be a dict"),
    ("runtime-env-var-int", {"runtime_env": {"env_vars": {"N": 1}}}, "execute", "runtime_env['env_vars']['N']=1"),
    ("runtime-env-secret", {"runtime_env": {"env_vars": {"OPENAI_API_KEY": "sk-x"}}}, "execute", "OPENAI_API_KEY look like secrets"),
    ("runtime-env-pip-string", {"runtime_env": {"pip": 5}}, "execute", "runtime_env['pip']=5: must be a list"),
    ("metadata-int-value", {"job_metadata": {"team": 7}}, "execute", "job_metadata['team']=7: metadata keys and values must be strings"),
    ("metadata-list", {"job_metadata": ["team"]}, "execute", "job_metadata=['team']: must be a dict"),
    ("conn-id-empty", {"ray_conn_id": ""}, "init", "ray_conn_id='': must be a non-empty string"),
    ("http-conn-id-int", {"http_conn_id": 3}, "init", "http_conn_id=3"),
    ("id-column-empty", {"id_column": ""}, "init", "id_column=''"),
    ("continue-string", {"should_continue_on_error": "yes"}, "init", "should_continue_on_error='yes': must be True or False"),
    ("overwrite-int", {"overwrite": 1}, "init", "overwrite=1: must be True or False"),
    ("fetch-logs-unknown", {"fetch_logs": "verbose"}, "init",
     "fetch_logs='verbose': must be True, False or one of 'all', 'summary', 'warnings', 'none'"),
    ("deferrable-string", {"deferrable": "true"}, "init", "deferrable='true'"),
    ("preprocess-int", {"preprocess": 3}, "init", "preprocess=3: must be a function or a 'package.module:function'"),
    ("preprocess-bad-path", {"preprocess": "my module.fn"}, "init", "preprocess='my module.fn'"),
    ("postprocess-dict", {"postprocess": {"a": 1}}, "init", "postprocess={'a': 1}"),
    ("preprocess-too-big", {"preprocess": _big_preprocess}, "execute", "it captures 'BIG'"),
]


def _operator(overrides: dict[str, Any]) -> RayLLMBatchOperator:
    return RayLLMBatchOperator(task_id="corpus", **{**GOOD, **overrides})


class _TI:
    dag_id, task_id, run_id, map_index, try_number = "corpus", "corpus", "manual__corpus", -1, 1
    start_date = dt.datetime.now(dt.timezone.utc)

    def xcom_push(self, **kwargs: Any) -> None:
        raise AssertionError("nothing may be pushed: the job must not have been submitted")


def test_the_corpus_is_big_enough_and_each_row_names_its_argument():
    assert len(CASES) >= 60
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize(("case", "overrides", "phase", "fragment"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_before_submission(case, overrides, phase, fragment, ray_conn):
    if phase == "init":
        with pytest.raises(RayLLMConfigError, match=re.escape(fragment)) as err:
            _operator(overrides)
    else:
        op = _operator(overrides)  # fine to build: the problem shows once rendered
        before = len(RayHook().list_jobs())
        with pytest.raises(RayLLMConfigError, match=re.escape(fragment)) as err:
            op.execute({"ti": _TI()})
        assert len(RayHook().list_jobs()) == before
    assert "task corpus" in str(err.value)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"job_id": ""}, "job_id='': must be a Ray job id"),
        ({"job_id": "None"}, "job_id='None'"),
        ({"job_id": "j", "ray_conn_id": ""}, "ray_conn_id=''"),
        ({"job_id": "j", "fetch_logs": "no"}, "fetch_logs='no'"),
    ],
)
def test_sensor_arguments_are_checked(kwargs, fragment):
    from airflow_provider_raydatallm.sensors import RayJobSensor

    with pytest.raises(RayLLMConfigError, match=re.escape(fragment)):
        RayJobSensor(task_id="wait", **kwargs).poke({})
