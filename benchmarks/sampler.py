"""Samples the Ray cluster's object-store use (all nodes) every 0.5 s into a JSONL file
(runs in the cluster environment, ``.venv-ray``): ``{"t": unix time, "used": bytes}``.

``python benchmarks/sampler.py GCS_ADDRESS OUT.jsonl`` (until killed)
"""

from __future__ import annotations

import json
import sys
import time


def main() -> None:
    from ray._private.internal_api import get_memory_info_reply, get_state_from_address

    state = get_state_from_address(sys.argv[1])
    with open(sys.argv[2], "a", buffering=1) as out:
        while True:
            try:
                stats = get_memory_info_reply(state, timeout_seconds=5).store_stats
                out.write(json.dumps({"t": time.time(), "used": int(stats.object_store_bytes_used),
                                      "spilled": int(stats.spilled_bytes_total)}) + "\n")  # fmt: skip
            except Exception as err:  # the cluster is busy: try again
                out.write(json.dumps({"t": time.time(), "error": str(err)[:200]}) + "\n")
            time.sleep(0.5)


if __name__ == "__main__":
    main()
