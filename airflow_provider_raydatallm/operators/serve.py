"""Ray Serve LLM applications as Airflow setup / teardown tasks: a warm, OpenAI-compatible
engine that the batch tasks between them share (``ServeDeploymentProcessorConfig``, or an
HTTP processor against the app's route), instead of one cold engine per task.

Both talk to the dashboard's Serve REST API (no Ray import here). See docs/serve.md.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from airflow.sdk import BaseOperator, conf
from airflow_provider_raydatallm import serve_apps
from airflow_provider_raydatallm.exceptions import RayLLMConfigError, RayServeAppInUseError, RayServeDeployError
from airflow_provider_raydatallm.hooks import _serve_api as api
from airflow_provider_raydatallm.hooks.ray import RayHook
from airflow_provider_raydatallm.operators._submission import refuse_secret_env
from airflow_provider_raydatallm.watch import defer_timeout, seconds, task_deadline

if TYPE_CHECKING:
    from airflow.sdk import Context

T = TypeVar("T")
XCOM_APP_KEY = "ray_serve_app"
# Pushed as XComs of their own too, so a DAG can write ``deploy.output["deployment_name"]``
# (indexing a task's output selects an XCom key).
XCOM_FIELDS = ("app_name", "deployment_name", "model_id", "route_prefix", "base_url", "chat_completions_url", "lease")
DEFAULT_DEPLOY_TIMEOUT = 3600.0  # a big model's first download and load on a fresh node
DEFAULT_PENDING_TIMEOUT = 900.0


def _with_hook(conn_id: str, work: Callable[[RayHook], Awaitable[T]]) -> T:
    """Run the async Serve calls on a worker (no event loop there), closing the client."""

    async def main() -> T:
        hook = RayHook(ray_conn_id=conn_id)
        try:
            return await work(hook)
        finally:
            await hook.aclose()

    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(main())
    # Inside a running loop: on_kill, which Airflow calls from its SIGTERM handler while the
    # task waits in asyncio.run on the same thread. The cleanup gets a thread and loop of its own.
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = asyncio.run(main())
        except BaseException as err:  # noqa: BLE001 (raised again in the caller's thread)
            outcome["error"] = err

    thread = threading.Thread(target=run, name="raydllm-serve-cleanup")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class RayServeLLMDeployOperator(BaseOperator):
    """
    Deploy (or update) a Ray Serve LLM application with the OpenAI-compatible router and wait
    until it is RUNNING; return its names and routes (XCom).

    The app is ``ray.serve.llm:build_openai_app`` over ``llm_configs``, deployed through the
    cluster's dashboard (Serve REST API) beside any other declarative apps, which are kept as
    they are. Deploying the same config again changes nothing (the app keeps running and
    serving); a changed config updates the app in place, unless other DAG runs hold leases on
    it (then the deploy fails and names them). An app of the same name that this
    provider did not deploy is refused, never replaced.

    Use it as a setup task and :class:`RayServeLLMDeleteOperator` as its teardown, around the
    batch tasks that use the app: the teardown runs even when a batch task fails. If this
    task fails (the app failed to start, timed out, or the task was marked failed while it
    waited), an app it created is removed, since Airflow skips a teardown whose setup failed.

    Returns ``{"app_name", "route_prefix", "deployment_name", "deployments" (model id ->
    LLMServer deployment), "model_id", "ingress_deployment", "base_url", "chat_completions_url",
    "config_hash", "status"}``; ``base_url`` is the OpenAI base URL as seen from inside the
    cluster (for ``HttpRequestProcessorConfig``).

    :param app_name: the Serve application name. Templated.
    :param llm_configs: one ``ray.serve.llm.LLMConfig`` as a dict of its fields
        (``model_loading_config``, ``accelerator_type``, ``deployment_config``,
        ``engine_kwargs``, ``lora_config``, ``runtime_env`` ...), or a list of them for a
        multi-model app. ``LLMConfig`` objects are accepted too. Templated.
    :param route_prefix: HTTP route of the app; default ``/<app_name>``. Templated.
    :param runtime_env: the application's runtime_env (the LLMConfigs may carry their own).
    :param http_options: Serve's HTTP options (``host``, ``port``) if this deploy starts Serve;
        a running Serve keeps its own.
    :param proxy_location: ``EveryNode`` (Serve's default), ``HeadOnly`` or ``Disabled``, if
        this deploy starts Serve.
    :param ray_conn_id: the ``ray`` connection.
    :param deferrable: wait in the triggerer; default ``[operators] default_deferrable``.
    :param poll_interval: seconds between status polls.
    :param timeout: seconds to wait for RUNNING (default 3600).
    :param pending_timeout: seconds replicas may wait for resources no node has (e.g. an
        ``accelerator_type`` the cluster lacks) before the task fails; None waits on.
    :param remove_on_failure: remove an app this task created when the task fails (unless
        another run holds a lease on it by then).
    :param lease_timeout: how long this DAG run's lease holds the app at most (default 24 h):
        the deploy takes a lease for its run before it deploys, and the run's teardown drops
        it; a run that never tears down (its DAG run deleted) stops holding the app after this.
    """

    template_fields: Sequence[str] = ("app_name", "llm_configs", "route_prefix", "runtime_env")
    template_fields_renderers = {"llm_configs": "json", "runtime_env": "json"}
    ui_color = "#fef3c7"

    def __init__(
        self,
        *,
        app_name: str,
        llm_configs: Any,
        route_prefix: str | None = None,
        runtime_env: dict[str, Any] | None = None,
        http_options: dict[str, Any] | None = None,
        proxy_location: str | None = None,
        ray_conn_id: str = RayHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 5.0,
        timeout: float | timedelta | None = DEFAULT_DEPLOY_TIMEOUT,
        pending_timeout: float | timedelta | None = DEFAULT_PENDING_TIMEOUT,
        remove_on_failure: bool = True,
        lease_timeout: float | timedelta = serve_apps.DEFAULT_LEASE_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app_name = app_name
        self.llm_configs = llm_configs
        self.route_prefix = route_prefix
        self.runtime_env = runtime_env
        self.http_options = http_options
        self.proxy_location = proxy_location
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self.timeout = seconds(timeout)
        self.pending_timeout = seconds(pending_timeout)
        self.remove_on_failure = remove_on_failure
        self.lease_timeout = seconds(lease_timeout) or serve_apps.DEFAULT_LEASE_SECONDS
        self._created: tuple[str, str] | None = None  # (app, config hash) this execute() created
        self._lease: str | None = None
        if not isinstance(poll_interval, (int, float)) or isinstance(poll_interval, bool) or not poll_interval > 0:
            raise RayLLMConfigError(f"task {self.task_id}: poll_interval={poll_interval!r}: must be a number > 0")
        if proxy_location not in (None, "EveryNode", "HeadOnly", "Disabled"):
            raise RayLLMConfigError(
                f"task {self.task_id}: proxy_location={proxy_location!r}: must be EveryNode, HeadOnly or Disabled"
            )

    def app_config(self) -> dict[str, Any]:
        """The Serve application config for the rendered arguments (checked; no I/O)."""
        fail = f"task {self.task_id}"
        if not isinstance(self.app_name, str) or not api.APP_NAME.fullmatch(self.app_name):
            raise RayLLMConfigError(
                f"{fail}: app_name={self.app_name!r}: must be 1-63 letters, digits, '_', '.' or '-', starting with a letter or digit"
            )
        route = self.route_prefix or f"/{self.app_name}"
        if not isinstance(route, str) or not route.startswith("/"):
            raise RayLLMConfigError(f"{fail}: route_prefix={route!r}: must start with '/'")
        configs = self.llm_configs if isinstance(self.llm_configs, (list, tuple)) else [self.llm_configs]
        configs = [c.model_dump(exclude_unset=True) if hasattr(c, "model_dump") else c for c in configs]
        try:
            api.check_llm_configs(configs)
        except api.ServeConfigError as err:
            raise RayLLMConfigError(f"{fail}: {err}") from None
        refuse_secret_env(self.runtime_env, self.task_id)
        for config in configs:
            refuse_secret_env(config.get("runtime_env"), self.task_id)
        return api.app_config(self.app_name, route, configs, self.runtime_env)

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.app_config()
        # The lease first: a teardown of another run that looks now sees this run on the app.
        async def lease_it(hook: RayHook) -> str:
            holder = serve_apps.holder_of(context, await serve_apps.namespace_of(hook))
            return await serve_apps.take_lease(hook, config["name"], holder, self.lease_timeout, self.log)

        self._lease = lease = _with_hook(self.ray_conn_id, lease_it)
        try:
            deployed = _with_hook(
                self.ray_conn_id,
                lambda hook: serve_apps.deploy(hook, config, self.log, self.http_options, self.proxy_location, lease),
            )
        except RayServeAppInUseError:
            # Refused before any write: let go as a teardown would. A teardown of the runs
            # that hold the app may have seen this run's lease meanwhile and kept the app for
            # it; if no lease is left now, the app goes.
            _with_hook(self.ray_conn_id, lambda hook: serve_apps.release(hook, config["name"], lease, self.log))
            raise
        except BaseException:
            _with_hook(self.ray_conn_id, lambda hook: serve_apps.drop_lease(hook, lease, self.log))
            raise
        created = deployed.created and self.remove_on_failure
        self._created = (deployed.app_name, deployed.config_hash) if created else None
        context["ti"].xcom_push(key=XCOM_APP_KEY, value={"app_name": deployed.app_name, "config_hash": deployed.config_hash,
                                                         "created": deployed.created, "changed": deployed.changed,
                                                         "lease": lease})  # fmt: skip
        deadline = task_deadline(self.timeout, self.execution_timeout, context["ti"])
        if self.deferrable:
            from airflow_provider_raydatallm.triggers.serve import RayServeAppTrigger  # not needed to parse a DAG

            self.defer(
                trigger=RayServeAppTrigger(
                    app_name=deployed.app_name, config_hash=deployed.config_hash, ray_conn_id=self.ray_conn_id,
                    poll_interval=self.poll_interval, deadline=deadline, pending_timeout=self.pending_timeout,
                    remove_on_kill=created, lease=lease,
                ),
                method_name="execute_complete",
                kwargs={"created": created},
                timeout=defer_timeout(deadline),
            )  # fmt: skip
        policy = serve_apps.AppWait(poll_interval=self.poll_interval, deadline=deadline, pending_timeout=self.pending_timeout)
        event = _with_hook(
            self.ray_conn_id,
            lambda hook: serve_apps.wait_running(hook, deployed.app_name, deployed.config_hash, policy, self.log),
        )
        return self._complete(context, event, deployed.config_hash, created, lease)

    def execute_complete(self, context: Context, event: dict[str, Any], created: bool = False) -> dict[str, Any]:
        record = context["ti"].xcom_pull(task_ids=self.task_id, key=XCOM_APP_KEY, map_indexes=context["ti"].map_index)
        record = record or {}
        return self._complete(context, event, record.get("config_hash", ""), created, record.get("lease"))

    def _complete(self, context: Context, event: dict[str, Any], config_hash: str, created: bool,
                  lease: str | None = None) -> dict[str, Any]:  # fmt: skip
        name = event.get("app_name") or self.app_name
        if event.get("status") == "running":
            value = _with_hook(self.ray_conn_id, lambda hook: serve_apps.app_value(hook, name))
            value["lease"] = lease
            self.log.info("Serve application %s is RUNNING: deployment %s, OpenAI base URL in the cluster %s",
                          name, value["deployment_name"], value["base_url"])  # fmt: skip
            for key in XCOM_FIELDS:
                context["ti"].xcom_push(key=key, value=value[key])
            self._created = self._lease = None
            return value
        removed = _with_hook(self.ray_conn_id, lambda hook: serve_apps.abandon(
            hook, name, lease, self.log, created=created, config_hash=config_hash))  # fmt: skip
        raise RayServeDeployError(
            f"task {self.task_id}: Serve application {name} did not become RUNNING ({event.get('status')}): "
            f"{event.get('message')}" + (" It was removed." if removed else "")
        )

    def on_kill(self) -> None:
        """Marked failed / cleared while waiting on a worker: drop this run's lease and remove
        the app this task created, unless another run holds a lease on it."""
        lease, self._lease = self._lease, None
        if self._created or lease:
            name, config_hash = self._created or (self.app_name, None)
            _with_hook(self.ray_conn_id, lambda hook: serve_apps.abandon(
                hook, name, lease, self.log, created=self._created is not None, config_hash=config_hash))  # fmt: skip


class RayServeLLMDeleteOperator(BaseOperator):
    """
    The teardown of :class:`RayServeLLMDeployOperator`: drop this DAG run's lease on the app
    and delete the app when no other run holds one (another DAG, or an overlapping run of
    this one, that deployed the same app is still using it: the app stays, and that run's
    own teardown deletes it). Other applications keep running. An app that is already gone
    is a success; an app this provider did not deploy is refused.

    Returns ``{"app_name", "removed", "kept_for"}`` (``kept_for``: the runs still holding it).

    :param app_name: the Serve application, e.g. ``deploy.output["app_name"]``. Templated.
    :param lease: the lease to drop, as the deploy returned it (``deploy.output["lease"]``);
        default: this DAG run's. Templated.
    :param idle_timeout: seconds to wait, once no lease is left, for another run to take one
        before deleting the app (the task holds its worker slot meanwhile); default 0.
    :param ray_conn_id: the ``ray`` connection.
    :param wait_timeout: seconds to wait until Serve has deleted the app.
    """

    template_fields: Sequence[str] = ("app_name", "lease")
    ui_color = "#fef3c7"

    def __init__(
        self,
        *,
        app_name: str,
        lease: str | None = None,
        idle_timeout: float | timedelta = 0.0,
        ray_conn_id: str = RayHook.default_conn_name,
        wait_timeout: float = serve_apps.REMOVE_WAIT_SECONDS,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.app_name = app_name
        self.lease = lease
        self.idle_timeout = seconds(idle_timeout) or 0.0
        self.ray_conn_id = ray_conn_id
        self.wait_timeout = wait_timeout

    def execute(self, context: Context) -> dict[str, Any]:
        if not isinstance(self.app_name, str) or not api.APP_NAME.fullmatch(self.app_name):
            raise RayLLMConfigError(f"task {self.task_id}: app_name={self.app_name!r}: not a Serve application name")
        if self.lease and not str(self.lease).startswith(serve_apps.LEASE_PREFIX):
            raise RayLLMConfigError(f"task {self.task_id}: lease={self.lease!r}: not a lease the deploy returned")

        async def release(hook: RayHook) -> tuple[bool, list[str]]:
            lease = self.lease or serve_apps.lease_id(
                self.app_name, serve_apps.holder_of(context, await serve_apps.namespace_of(hook)))
            return await serve_apps.release(hook, self.app_name, lease, self.log, idle=self.idle_timeout,
                                            wait=self.wait_timeout)  # fmt: skip

        removed, kept_for = _with_hook(self.ray_conn_id, release)
        return {"app_name": self.app_name, "removed": removed, "kept_for": kept_for}
