"""The test Airflow's auth manager: Airflow's SimpleAuthManager, plus DAG-level read rules,
as a real deployment gets them from FAB or Keycloak. ``outsider`` (a viewer) may not read
the DAGs named in RAYDLLM_TEST_HIDDEN_DAGS; the users named in RAYDLLM_TEST_NO_XCOM_USERS
may read task instances but no XCom; everyone else is as SimpleAuthManager says. The plugin
must take its answer from the auth manager, whichever it is."""

from __future__ import annotations

import os
from typing import Any

from airflow.api_fastapi.auth.managers.simple.simple_auth_manager import SimpleAuthManager

RESTRICTED_USER = "outsider"


def _hidden() -> set[str]:
    return {d for d in os.environ.get("RAYDLLM_TEST_HIDDEN_DAGS", "").split(",") if d}


class DagRestrictedAuthManager(SimpleAuthManager):
    def _hides(self, user: Any, dag_id: str | None) -> bool:
        return getattr(user, "username", None) == RESTRICTED_USER and dag_id in _hidden()

    def is_authorized_dag(self, *, method, user, access_entity=None, details=None) -> bool:
        if self._hides(user, details.id if details else None):
            return False
        no_xcom = {u for u in os.environ.get("RAYDLLM_TEST_NO_XCOM_USERS", "").split(",") if u}
        if getattr(user, "username", None) in no_xcom and access_entity is not None and access_entity.name == "XCOM":
            return False
        return super().is_authorized_dag(method=method, user=user, access_entity=access_entity, details=details)

    def filter_authorized_dag_ids(self, *, dag_ids, user, method="GET", team_name=None) -> set[str]:
        allowed = super().filter_authorized_dag_ids(dag_ids=dag_ids, user=user, method=method, team_name=team_name)
        return {d for d in allowed if not self._hides(user, d)}
