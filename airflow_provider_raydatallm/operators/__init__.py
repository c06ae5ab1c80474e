from __future__ import annotations

from airflow_provider_raydatallm.operators.batch import RayLLMBatchOperator

__all__ = ["RayLLMBatchOperator"]
