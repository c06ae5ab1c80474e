"""The OpenLineage run facet of a Ray Data LLM batch (imported only when lineage is emitted)."""

from __future__ import annotations

import attr
from airflow.providers.common.compat.openlineage.facet import RunFacet


@attr.define
class RayDataLLMRunFacet(RunFacet):
    """The model that processed the rows, the Ray job, and what came out."""

    model: str
    raySubmissionId: str  # noqa: N815 (OpenLineage facets use camelCase)
    rowsIn: int | None = None  # noqa: N815
    rowsOut: int | None = None  # noqa: N815
    errorRows: int | None = None  # noqa: N815
    inputTokens: int | None = None  # noqa: N815
    outputTokens: int | None = None  # noqa: N815

    @staticmethod
    def _get_schema() -> str:
        return "https://github.com/airflow-provider-raydatallm/facets/RayDataLLMRunFacet.json"
