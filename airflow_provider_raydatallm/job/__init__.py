"""The cluster side: the Ray job that runs one batch (spec -> read -> processor -> write).

``spec``, ``callables`` and ``metrics`` are pure and also used by the operator; ``run``,
``io`` and ``rows`` run on the cluster. Run a job by hand with
``python -m airflow_provider_raydatallm.job --spec spec.json``.
"""
