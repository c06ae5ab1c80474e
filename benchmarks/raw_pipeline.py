"""The hand-written Ray Data pipeline the provider's job is compared with: read the CSV,
the same HTTP processor and functions, write Parquet (submitted as a Ray job).

``python raw_pipeline.py INPUT.csv OUTPUT_DIR URL CONCURRENCY BATCH_SIZE PARTITIONS``
"""

from __future__ import annotations

import sys
import time

import ray
import ray.data
from ray.data.llm import HttpRequestProcessorConfig, build_processor

from pipeline import postprocess, preprocess


def main() -> None:
    source, out, url, concurrency, batch_size, partitions = sys.argv[1:7]
    started = time.monotonic()
    ray.init()
    ds = ray.data.read_csv(source).repartition(int(partitions))
    config = HttpRequestProcessorConfig(url=url, batch_size=int(batch_size), concurrency=int(concurrency), max_retries=0)
    processor = build_processor(config, preprocess=preprocess, postprocess=postprocess)
    processor(ds).write_parquet(out)
    print(f"RAW_DONE {time.monotonic() - started:.3f}")


if __name__ == "__main__":
    main()
