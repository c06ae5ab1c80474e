"""Faults injected into a real Ray job from outside the provider's code, through Ray's
``runtime_env`` (``worker_process_setup_hook`` runs in every worker process as it starts)."""

from __future__ import annotations

import os


def die_after_first_block_write() -> None:
    """The worker that writes the job's first block of good rows dies right after the file
    is complete (as if OOM-killed), once per job: Ray Data then runs that write again."""
    from airflow_provider_raydatallm.job import sink

    marker = os.environ["RAYDLLM_FAULT_MARKER"]
    original = sink.write_table

    def write_then_die(table, uri, name, fmt):
        written = original(table, uri, name, fmt)
        if "_errors" not in uri:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                return written  # already died once
            os.write(fd, f"{uri}/{name}\n".encode())
            os.close(fd)
            os._exit(1)
        return written

    sink.write_table = write_then_die
