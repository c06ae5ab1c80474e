from __future__ import annotations

from airflow_provider_raydatallm.triggers.ray_job import RayJobTrigger

__all__ = ["RayJobTrigger"]
