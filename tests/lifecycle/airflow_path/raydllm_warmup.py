"""A trigger that asks the triggerer's execution API one question and ends.

A triggerer serves its triggers' XCom, variable and connection reads through an execution API
it builds in-process on the first such read, in the loop that also heartbeats: on a loaded
2-core machine that first read held the triggerer for ~20 s. The lifecycle fixture runs this
once after starting the triggerer, so a drill measures the provider's latency (mark failed ->
job stopped), not Airflow's one-off start-up. On PYTHONPATH of every Airflow component.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class ExecutionApiWarmUpTrigger(BaseTrigger):
    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{__name__}.ExecutionApiWarmUpTrigger", {}

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from airflow.sdk.bases.xcom import BaseXCom

        ti = self.task_instance
        map_index = -1 if ti.map_index is None else ti.map_index
        await BaseXCom.aget_one(key="warm_up", dag_id=ti.dag_id, task_id=ti.task_id, run_id=ti.run_id, map_index=map_index)
        yield TriggerEvent({"warm": True})
