"""Apache Airflow provider for Ray Data LLM batch inference.

Importing this package (or its hooks, operators, sensors and triggers) must stay cheap:
the scheduler imports DAG files constantly. Nothing here imports ``ray``, ``vllm``,
``torch``, ``pyarrow`` or ``pandas``; only the cluster-side ``job`` package does.
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
