"""Serve LLM applications from Airflow, without a cluster: the app config and its hash, the
whole-config edits, the operator's checks, and the deploy / remove logic against a real
local HTTP server that answers like the dashboard's Serve REST API."""

from __future__ import annotations

import copy
import json
import logging

import pytest

from airflow_provider_raydatallm import serve_apps
from airflow_provider_raydatallm.exceptions import RayLLMConfigError, RayServeDeployError
from airflow_provider_raydatallm.hooks import _serve_api as api
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.operators._submission import processor_spec
from airflow_provider_raydatallm.operators.serve import RayServeLLMDeployOperator
from airflow_provider_raydatallm.triggers.serve import RayServeAppTrigger
from tests.unit import http_server

LLM = {"model_loading_config": {"model_id": "qwen-0.5b", "model_source": "Qwen/Qwen2.5-0.5B-Instruct"},
       "accelerator_type": "A10G", "engine_kwargs": {"tensor_parallel_size": 2},
       "deployment_config": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 2}}}  # fmt: skip
LOG = logging.getLogger("test")


def _details(apps: dict, running: bool = True) -> dict:
    """A GET /api/serve/applications/ answer, shaped as Ray 2.60's (trimmed)."""
    return {
        "controller_info": {"actor_id": "abc"} if running else {},
        "proxy_location": "EveryNode" if running else None,
        "http_options": {"host": "0.0.0.0", "port": 8000} if running else {},
        "proxies": {"n1": {"node_ip": "10.0.0.5", "status": "HEALTHY"}} if running else {},
        "applications": apps,
    }


def _app(config: dict, status: str = "RUNNING", source: str = "declarative", message: str = "") -> dict:
    dep = api.llm_server_name(config["args"]["llm_configs"][0]) if config.get("args") else "D"
    return {
        "name": config["name"], "status": status, "route_prefix": config.get("route_prefix"), "source": source,
        "message": "", "deployed_app_config": config,
        "deployment_topology": {"ingress_deployment": "OpenAiIngress"},
        "deployments": {dep: {"status": "HEALTHY" if status == "RUNNING" else "UPDATING", "message": message,
                              "replicas": [{"state": "RUNNING"}]}},
    }  # fmt: skip


def test_app_config_is_the_openai_app_marked_with_a_stable_hash():
    one = api.app_config("llm", "/llm", [LLM], {"env_vars": {"HF_HOME": "/cache"}})
    assert one["import_path"] == "ray.serve.llm:build_openai_app" and one["args"] == {"llm_configs": [LLM]}
    env = one["runtime_env"]["env_vars"]
    assert env["HF_HOME"] == "/cache" and env[api.OWNER_ENV] == api.OWNER and api.is_ours(one)
    assert api.config_hash(api.app_config("llm", "/llm", [copy.deepcopy(LLM)], {"env_vars": {"HF_HOME": "/cache"}})) == api.config_hash(one)
    changed = {**LLM, "accelerator_type": "L4"}
    assert api.config_hash(api.app_config("llm", "/llm", [changed], {"env_vars": {"HF_HOME": "/cache"}})) != api.config_hash(one)
    assert not api.is_ours({"name": "x", "runtime_env": {"env_vars": {"A": "1"}}})


@pytest.mark.parametrize(
    ("configs", "says"),
    [
        ([], "llm_configs is empty"),
        ([{**LLM, "acelerator_type": "L4"}], "no field 'acelerator_type'"),
        ([{"engine_kwargs": {}}], "llm_configs[0].model_loading_config.model_id"),
        ([LLM, LLM], "'qwen-0.5b' appears twice"),
        ([{**LLM, "engine_kwargs": {"dtype": object()}}], "not JSON-serializable"),
    ],
)
def test_llm_configs_are_checked_before_anything_is_sent(configs, says):
    with pytest.raises(api.ServeConfigError, match=None) as err:
        api.check_llm_configs(configs)
    assert says in str(err.value)


def test_deployment_names_follow_ray_serve_llm():
    assert api.llm_server_name(LLM) == "LLMServer:qwen-0_5b"
    assert api.llm_server_name({"model_loading_config": {"model_id": "org/m.v1"}}) == "LLMServer:org--m_v1"
    assert api.llm_server_name({**LLM, "deployment_config": {"name": "mine"}}) == "LLMServer:mine"


def test_put_body_keeps_other_apps_and_the_running_serves_http_options():
    ours = api.app_config("llm", "/llm", [LLM])
    other = {"name": "other", "route_prefix": "/other", "import_path": "m:app"}
    state = api.ServeState.from_api(_details({"other": _app(other), "llm": _app(ours)}))
    updated = api.app_config("llm", "/llm", [{**LLM, "accelerator_type": "L4"}])
    body = api.put_body(state, put=updated, http_options={"port": 9999}, proxy_location="HeadOnly")
    assert body["applications"] == [other, updated]
    assert body["http_options"] == {"host": "0.0.0.0", "port": 8000} and body["proxy_location"] == "EveryNode"
    assert api.put_body(state, remove="llm")["applications"] == [other]
    fresh = api.ServeState.from_api(_details({}, running=False))
    body = api.put_body(fresh, put=ours, http_options={"port": 9999}, proxy_location="HeadOnly")
    assert body == {"applications": [ours], "http_options": {"port": 9999}, "proxy_location": "HeadOnly"}


def test_state_parses_apps_and_the_base_url_inside_the_cluster():
    ours = api.app_config("llm", "/llm", [LLM])
    state = api.ServeState.from_api(_details({"llm": _app(ours, "DEPLOYING", message="Deployment X has 1 replicas "
                                                          "that have taken more than 30s to be scheduled.")}))  # fmt: skip
    app = state.apps["llm"]
    assert state.running and app.ours and app.ingress == "OpenAiIngress" and app.status == "DEPLOYING"
    assert "taken more than 30s" in app.unscheduled()
    assert api.base_url(state, "/llm") == "http://127.0.0.1:8000/llm/v1"  # a proxy on every node
    head_only = api.ServeState.from_api({**_details({}), "proxy_location": "HeadOnly"})
    assert api.base_url(head_only, "/") == "http://10.0.0.5:8000/v1"


def _operator(**kwargs) -> RayServeLLMDeployOperator:
    return RayServeLLMDeployOperator(task_id="deploy_llm", **{"app_name": "llm", "llm_configs": LLM, **kwargs})


@pytest.mark.parametrize(
    ("kwargs", "says"),
    [
        ({"app_name": "bad name!"}, "task deploy_llm: app_name='bad name!'"),
        ({"route_prefix": "llm"}, "route_prefix='llm': must start with '/'"),
        ({"llm_configs": {**LLM, "modle": 1}}, "task deploy_llm: llm_configs[0]: LLMConfig has no field 'modle'"),
        ({"runtime_env": {"env_vars": {"HF_TOKEN": "hf_abc"}}}, "HF_TOKEN look like secrets"),
        ({"llm_configs": {**LLM, "runtime_env": {"env_vars": {"OPENAI_API_KEY": "x"}}}}, "OPENAI_API_KEY"),
    ],
)
def test_the_deploy_operator_names_what_is_wrong(kwargs, says):
    with pytest.raises(RayLLMConfigError) as err:
        _operator(**kwargs).app_config()
    assert says in str(err.value) and "hf_abc" not in str(err.value)


def test_the_deploy_operator_builds_the_seeds_llm_config_as_is():
    config = _operator(llm_configs=[LLM]).app_config()
    assert config["name"] == "llm" and config["route_prefix"] == "/llm" and config["args"]["llm_configs"] == [LLM]
    with pytest.raises(RayLLMConfigError, match="proxy_location='Everywhere'"):
        _operator(proxy_location="Everywhere")


def test_trigger_serializes_every_argument():
    trigger = RayServeAppTrigger("llm", "h1", ray_conn_id="c", poll_interval=2, deadline=5.0, pending_timeout=9, remove_on_kill=True)
    path, kwargs = trigger.serialize()
    assert path == "airflow_provider_raydatallm.triggers.serve.RayServeAppTrigger"
    assert RayServeAppTrigger(**kwargs).serialize() == (path, kwargs)
    assert kwargs == {"app_name": "llm", "config_hash": "h1", "ray_conn_id": "c", "poll_interval": 2.0, "deadline": 5.0,
                      "pending_timeout": 9.0, "remove_on_kill": True, "lease": None}  # fmt: skip


class ChatCompletionRequest:  # stands in for Ray's class: the Airflow side has no Ray
    pass


def test_serve_processor_dtype_mapping_ships_as_names():
    spec = processor_spec({"type": "ServeDeploymentProcessorConfig", "deployment_name": "LLMServer:m",
                           "dtype_mapping": {"Chat": ChatCompletionRequest, "Completion": "CompletionRequest"}}, "t")  # fmt: skip
    assert spec.kwargs["dtype_mapping"] == {
        "Chat": f"{__name__}:ChatCompletionRequest",
        "Completion": "CompletionRequest",
    }
    for bad in (3, "a local <class>"):
        with pytest.raises(RayLLMConfigError, match=r"dtype_mapping\['Chat'\]="):
            processor_spec({"type": "ServeDeploymentProcessorConfig", "deployment_name": "d", "dtype_mapping": {"Chat": bad}}, "t")


# -- deploy / remove against a server that answers like the dashboard -------------------------


@pytest.fixture
def serve(monkeypatch):
    canned, httpd = http_server.start()
    host, port = canned.address.split("://")[1].split(":")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_SERVE_UNIT", json.dumps({"conn_type": "ray", "host": host, "port": int(port)}))
    yield canned
    httpd.shutdown()


def _puts(server) -> list[dict]:
    return [json.loads(s.body) for s in server.seen if s.method == "PUT"]


async def test_deploy_of_the_same_config_sends_nothing(serve):
    ours = api.app_config("llm", "/llm", [LLM])
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours)}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    deployed = await serve_apps.deploy(hook, ours, LOG)
    await hook.aclose()
    assert (deployed.created, deployed.changed, deployed.config_hash) == (False, False, api.config_hash(ours))
    assert _puts(serve) == []


def _lease_record(app: str, holder: str) -> dict:
    import time

    return {"job_id": None, "submission_id": serve_apps.lease_id(app, holder), "status": "RUNNING", "entrypoint": "true",
            "metadata": {serve_apps.LEASE_APP_KEY: app, serve_apps.LEASE_HOLDER_KEY: holder,
                         serve_apps.LEASE_EXPIRES_KEY: f"{time.time() + 3600:.3f}"}}  # fmt: skip


@pytest.mark.parametrize("others", [[], ["ns:daily_b/run7"]])
async def test_a_changed_config_is_refused_while_other_runs_hold_the_app(serve, others):
    """Another DAG deploys the same app name with another config: with no other lease it is an
    update in place; while another run holds a lease, the engine would restart under its batch."""
    old = api.app_config("llm", "/llm", [{**LLM, "engine_kwargs": {"max_model_len": 512}}])
    ours = api.app_config("llm", "/llm", [LLM])
    mine = serve_apps.lease_id("llm", "ns:daily_a/run1")
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(old)}))
    serve.then("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours, "DEPLOYING")}))
    serve.answer("PUT", api.APPLICATIONS_PATH, 200, "")
    serve.answer("GET", "/api/jobs/", 200, [_lease_record("llm", "ns:daily_a/run1"), *(_lease_record("llm", h) for h in others),
                                            _lease_record("other-app", "ns:daily_c/run1")])  # fmt: skip
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        if others:
            with pytest.raises(RayServeDeployError, match=r"runs another config .* 1 other run\(s\) hold a lease on it: "
                                                          r"ns:daily_b/run7\. Updating it would restart"):
                await serve_apps.deploy(hook, ours, LOG, lease=mine)
            assert _puts(serve) == []
        else:
            deployed = await serve_apps.deploy(hook, ours, LOG, lease=mine)
            assert (deployed.created, deployed.changed) == (False, True) and len(_puts(serve)) == 1
    finally:
        await hook.aclose()


async def test_deploy_adds_the_app_beside_others_and_checks_it_took(serve):
    ours = api.app_config("llm", "/llm", [LLM])
    other = {"name": "other", "route_prefix": "/other", "import_path": "m:app"}
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"other": _app(other)}))
    serve.then("GET", api.APPLICATIONS_PATH, 200, _details({"other": _app(other), "llm": _app(ours, "DEPLOYING")}))
    serve.answer("PUT", api.APPLICATIONS_PATH, 200, "")
    hook = RayHook(ray_conn_id="ray_serve_unit")
    deployed = await serve_apps.deploy(hook, ours, LOG)
    await hook.aclose()
    assert deployed.created and deployed.changed
    assert _puts(serve) == [{"applications": [other, ours], "http_options": {"host": "0.0.0.0", "port": 8000},
                             "proxy_location": "EveryNode"}]  # fmt: skip


@pytest.mark.parametrize(
    ("apps", "says"),
    [
        ({"llm": _app({"name": "llm", "route_prefix": "/llm", "import_path": "user:app"})}, "not deployed by this provider"),
        ({"mine": _app({"name": "mine", "route_prefix": "/", "import_path": "user:app"}, source="imperative")}, "serve.run"),
        ({"web": _app({"name": "web", "route_prefix": "/llm", "import_path": "user:app"})}, "taken by Serve application 'web'"),
    ],
)
async def test_deploy_never_replaces_what_it_did_not_deploy(serve, apps, says):
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details(apps))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    with pytest.raises(RayServeDeployError, match=says):
        await serve_apps.deploy(hook, api.app_config("llm", "/llm", [LLM]), LOG)
    await hook.aclose()
    assert _puts(serve) == []


async def test_remove_leaves_foreign_and_replaced_apps_alone(serve):
    foreign = {"name": "llm", "route_prefix": "/llm", "import_path": "user:app"}
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(foreign)}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    with pytest.raises(RayServeDeployError, match="not deployed by this provider"):
        await serve_apps.remove(hook, "llm", LOG)
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(api.app_config("llm", "/llm", [LLM]))}))
    assert await serve_apps.remove(hook, "llm", LOG, only_hash="another") is False
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({}))
    assert await serve_apps.remove(hook, "llm", LOG) is False
    await hook.aclose()
    assert _puts(serve) == []


async def test_wait_fails_on_deploy_failure_and_on_unplaceable_replicas(serve):
    ours = api.app_config("llm", "/llm", [LLM])
    hook = RayHook(ray_conn_id="ray_serve_unit")
    failed = _app(ours, "DEPLOY_FAILED", message="RuntimeError: CUDA out of memory")
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": failed}))
    event = await serve_apps.wait_running(hook, "llm", api.config_hash(ours), serve_apps.AppWait(poll_interval=0.05), LOG)
    assert event["status"] == "failed" and "CUDA out of memory" in event["message"]
    stuck = _app(ours, "DEPLOYING", message="Deployment has 1 replicas that have taken more than 30s to be scheduled.")
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": stuck}))
    policy = serve_apps.AppWait(poll_interval=0.05, pending_timeout=0.2)
    event = await serve_apps.wait_running(hook, "llm", api.config_hash(ours), policy, LOG)
    assert event["status"] == "unschedulable" and "to be scheduled" in event["message"]
    replaced = api.app_config("llm", "/llm", [{**LLM, "accelerator_type": "L4"}])
    serve.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(replaced, "DEPLOYING")}))
    event = await serve_apps.wait_running(hook, "llm", api.config_hash(ours), serve_apps.AppWait(poll_interval=0.05), LOG)
    assert event["status"] == "gone" and "another config" in event["message"]
    await hook.aclose()


@pytest.fixture
def slow_writes(serve, monkeypatch):
    """Serve's config writes are answered after the (shortened) write timeout: Ray took them."""
    from airflow_provider_raydatallm.hooks import ray as ray_hook

    monkeypatch.setattr(ray_hook, "SERVE_WRITE_TIMEOUT", 0.5)
    monkeypatch.setattr(serve_apps, "UNANSWERED_WRITE_POLL_SECONDS", 0.1)
    host, port = serve.address.split("://")[1].split(":")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_SERVE_UNIT", json.dumps({"conn_type": "ray", "host": host, "port": int(port),
                                                                  "extra": {"timeout": 0.3}}))  # fmt: skip
    serve.answer("PUT", api.APPLICATIONS_PATH, 200, "")
    serve.delays[("PUT", api.APPLICATIONS_PATH)] = 1.5
    return serve


async def test_a_deploy_whose_write_is_answered_late_carries_on_once_serve_runs_the_config(slow_writes, caplog):
    """The head took the write but answered after the timeout (Serve starting on a busy head):
    the deploy reads what Serve runs and carries on, instead of failing as "unreachable" and
    leaving an app no lease holds."""
    ours = api.app_config("llm", "/llm", [LLM])
    slow_writes.answer("GET", api.APPLICATIONS_PATH, 200, _details({}, running=False))
    slow_writes.then("GET", api.APPLICATIONS_PATH, 200, _details({}, running=False))  # not yet
    slow_writes.then("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours, "DEPLOYING")}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        with caplog.at_level(logging.INFO, logger="test"):
            deployed = await serve_apps.deploy(hook, ours, LOG)
    finally:
        await hook.aclose()
    assert (deployed.created, deployed.changed, deployed.config_hash) == (True, True, api.config_hash(ours))
    assert len(_puts(slow_writes)) == 1  # not written twice
    said = caplog.text
    assert "did not answer within 0.5s" in said and "the write took, only its answer was late" in said
    assert "unreachable" not in said


async def test_a_deploy_whose_write_never_shows_fails_saying_the_head_is_slow(slow_writes, monkeypatch):
    monkeypatch.setattr(serve_apps, "UNANSWERED_WRITE_GRACE_SECONDS", 0.5)
    ours = api.app_config("llm", "/llm", [LLM])
    slow_writes.answer("GET", api.APPLICATIONS_PATH, 200, _details({}, running=False))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        with pytest.raises(RayServeDeployError, match=r"config write was not answered within 0\.5s and Serve did not "
                                                      r"show the config 0\.5s later \(the head is up but busy\)\. Ray "
                                                      r"may still carry the write out"):
            await serve_apps.deploy(hook, ours, LOG)
    finally:
        await hook.aclose()
    assert len(_puts(slow_writes)) == 1


async def test_an_app_being_deleted_is_not_taken_for_a_late_write_that_took(slow_writes, monkeypatch):
    """Another run's teardown deletes the app while this deploy's write goes unanswered: the
    app Serve shows with the same config but DELETING is not this deploy's."""
    monkeypatch.setattr(serve_apps, "UNANSWERED_WRITE_GRACE_SECONDS", 0.5)
    ours = api.app_config("llm", "/llm", [LLM])
    slow_writes.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours, "DELETING")}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        with pytest.raises(RayServeDeployError, match="was not answered within"):
            await serve_apps.deploy(hook, ours, LOG)
    finally:
        await hook.aclose()
    assert len(_puts(slow_writes)) == 1


async def test_a_removal_answered_late_waits_for_serve_instead_of_writing_again(slow_writes):
    ours = api.app_config("llm", "/llm", [LLM])
    slow_writes.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours)}))
    slow_writes.then("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours)}))  # not carried out yet
    slow_writes.then("GET", api.APPLICATIONS_PATH, 503, "busy", "text/plain")  # a busy head's read
    slow_writes.then("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours, "DELETING")}))
    slow_writes.then("GET", api.APPLICATIONS_PATH, 200, _details({}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        assert await serve_apps.remove(hook, "llm", LOG) is True
    finally:
        await hook.aclose()
    assert len(_puts(slow_writes)) == 1  # written once


async def test_a_lease_submission_answered_late_is_looked_up(slow_writes, monkeypatch):
    """Ray took the lease's submission but answered late: its record (this submission's
    expiry) means the lease is held; an older record of the same run is renewed; none at all
    fails the deploy naming the lease."""
    import time
    import types

    monkeypatch.setattr(serve_apps, "time", types.SimpleNamespace(time=lambda: 1000.0, monotonic=time.monotonic))
    monkeypatch.setattr(serve_apps, "LEASE_LOOKUP_SECONDS", 0.5)
    holder = "ns:daily_a/run1"
    lease = serve_apps.lease_id("llm", holder)
    record = {**_lease_record("llm", holder), "status": "SUCCEEDED"}
    record["metadata"][serve_apps.LEASE_EXPIRES_KEY] = "4600.000"  # 1000 + 3600: this submission's
    slow_writes.answer("POST", "/api/jobs/", 200, {"submission_id": lease})
    slow_writes.delays[("POST", "/api/jobs/")] = 1.0
    slow_writes.answer("GET", f"/api/jobs/{lease}", 200, record)
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        assert await serve_apps.take_lease(hook, "llm", holder, 3600, LOG) == lease
        assert [s.method for s in slow_writes.seen if s.path.startswith("/api/jobs/")] == ["POST", "GET"]

        # An older lease of this run (a try killed before its teardown): dropped and taken anew.
        stale = {**record, "metadata": {**record["metadata"], serve_apps.LEASE_EXPIRES_KEY: "900.000"}}
        slow_writes.answer("GET", f"/api/jobs/{lease}", 200, stale)
        slow_writes.then("GET", f"/api/jobs/{lease}", 200, record)
        slow_writes.answer("DELETE", f"/api/jobs/{lease}", 200, {"deleted": True})
        slow_writes.seen.clear()
        assert await serve_apps.take_lease(hook, "llm", holder, 3600, LOG) == lease
        assert [s.method for s in slow_writes.seen] == ["POST", "GET", "DELETE", "POST", "GET"]

        # Not recorded after the first late answer: submitted again; Ray then says it exists,
        # with this submission's expiry (the first one was recorded meanwhile): held.
        slow_writes.answer("GET", f"/api/jobs/{lease}", 404, "no such job", "text/plain")
        slow_writes.then("GET", f"/api/jobs/{lease}", 404, "no such job", "text/plain")
        slow_writes.then("GET", f"/api/jobs/{lease}", 200, record)
        slow_writes.answer("POST", "/api/jobs/", 200, {"submission_id": lease})
        slow_writes.then("POST", "/api/jobs/", 500, f"Job with submission_id {lease} already exists", "text/plain")
        slow_writes.delays[("POST", "/api/jobs/")] = [1.0, 0.0]  # the second submission is answered at once
        slow_writes.seen.clear()
        assert await serve_apps.take_lease(hook, "llm", holder, 3600, LOG) == lease
        assert [s.method for s in slow_writes.seen] == ["POST", "GET", "GET", "POST", "GET"]  # no DELETE
        slow_writes.delays[("POST", "/api/jobs/")] = 1.0

        slow_writes.answer("GET", f"/api/jobs/{lease}", 404, "no such job", "text/plain")  # never recorded
        slow_writes.answer("POST", "/api/jobs/", 200, {"submission_id": lease})
        with pytest.raises(RayServeDeployError, match=rf"taking lease {lease} .* did not answer within 0\.3s.* "
                                                      r"Ray has not recorded it 0\.5s later"):
            await serve_apps.take_lease(hook, "llm", holder, 3600, LOG)
    finally:
        await hook.aclose()


async def test_a_removal_answered_late_that_never_takes_is_written_again_past_the_grace(slow_writes, monkeypatch):
    """A removal's write answered late and never carried out: after the grace the app is
    written out again (even when the removal's own wait is shorter than the grace)."""
    monkeypatch.setattr(serve_apps, "UNANSWERED_WRITE_GRACE_SECONDS", 1.5)
    ours = api.app_config("llm", "/llm", [LLM])
    slow_writes.answer("GET", api.APPLICATIONS_PATH, 200, _details({"llm": _app(ours)}))
    hook = RayHook(ray_conn_id="ray_serve_unit")
    try:
        with pytest.raises(RayServeDeployError, match=r"it came back after 3 removals"):
            await serve_apps.remove(hook, "llm", LOG, wait=0.5)
    finally:
        await hook.aclose()
    assert len(_puts(slow_writes)) == 3
