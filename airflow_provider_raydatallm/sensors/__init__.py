from __future__ import annotations

from airflow_provider_raydatallm.sensors.ray_job import RayJobSensor

__all__ = ["RayJobSensor"]
