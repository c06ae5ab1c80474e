"""A task's identity (spec hash, resume key) is the same in every process, and changes with
what the user wrote. Each probe is a fresh interpreter with its own PYTHONHASHSEED that
imports tests/dags/identity/identity_dag.py as Airflow does (by path, under Airflow's
mangled module name, the DAG folder on sys.path) and builds every task's spec."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pytest

from airflow_provider_raydatallm.fingerprint import FingerprintError, fingerprint

DAGS = Path(__file__).resolve().parents[1] / "dags"
SEEDS = ("1", "2", "3", "4", "5")
TASKS = {"functions", "lambdas", "partials", "closures"}

# Loads each (DAG folder, DAG file) in turn, as Airflow's DagBag does, and prints per task:
# the spec hash, the resume key, each callable's fingerprint and a digest of its pickled bytes.
PROBE = r"""
import hashlib, importlib, importlib.machinery, importlib.util, json, sys
from airflow.utils.file import get_unique_dag_module_name
from airflow_provider_raydatallm.job.spec import RunIdentity
from airflow_provider_raydatallm.operators import _jobs, _submission as sub

report = {}
for folder, path in zip(sys.argv[1::2], sys.argv[2::2]):
    for name in [m for m in sys.modules if m == "identity" or m.startswith("identity.")]:
        del sys.modules[name]  # the previous folder's helper module
    sys.path.insert(0, folder)
    importlib.invalidate_caches()
    name = get_unique_dag_module_name(path)
    loader = importlib.machinery.SourceFileLoader(name, path)
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module
    loader.exec_module(module)
    sys.path.remove(folder)
    tasks = {}
    for task in module.dag.tasks:
        run = RunIdentity(dag_id="identity_probe", task_id=task.task_id, run_id="scheduled__1", try_number=1)
        spec = task.build_spec(run)
        digest = _jobs.spec_hash(spec)
        tasks[task.task_id] = {
            "spec_hash": digest,
            "resume_key": sub.with_resume(run, 1, 1, digest).resume_key,
            "fingerprints": [spec.preprocess.fingerprint, spec.postprocess.fingerprint],
            "pickled": [hashlib.sha256(spec.preprocess.pickled.encode()).hexdigest(),
                        hashlib.sha256(spec.postprocess.pickled.encode()).hexdigest()],
        }
    report[folder] = tasks
print(json.dumps(report))
"""

# One change a user makes, in the DAG file or in its helper module: (file, old, new, the
# tasks whose callables read what changed). STYLED: the tasks that build the helper's prompt
# from STYLE.
STYLED = {"functions", "partials"}
CHANGES = {
    "set member": ("identity_dag.py", '"mixed"', '"ambivalent"', TASKS),
    "frozenset member": ("identity_dag.py", '"of", "to"}', '"of", "by"}', {"functions", "closures"}),
    "prompt in the helper": ("identity_helpers.py", "social media post", "forum post", STYLED),
    "enum value": ("identity_dag.py", 'FORMAL = "formal"', 'FORMAL = "polite"', STYLED),
    "dataclass field": ("identity_dag.py", "max_words=40", "max_words=50", STYLED),
    "lambda body": ("identity_dag.py", "{sorted(LABELS)} {row['text']}", "{sorted(LABELS)}", {"lambdas"}),
    "closure value": ("identity_dag.py", "threshold=7", "threshold=8", {"closures"}),
}


def _changed_copies(root: Path) -> dict[str, str]:
    """A DAG folder per change, each a copy of tests/dags/identity with that one edit."""
    folders = {}
    for label, (file, old, new, _) in CHANGES.items():
        folder = root / label.replace(" ", "_")
        shutil.copytree(DAGS / "identity", folder / "identity", ignore=shutil.ignore_patterns("__pycache__"))
        target = folder / "identity" / file
        text = target.read_text()
        assert text.count(old) == 1, f"{file} no longer holds {old!r} once: update CHANGES"
        target.write_text(text.replace(old, new))
        folders[label] = str(folder)
    return folders


def _probe(seed: str, folders: list[str]) -> subprocess.Popen:
    args = [arg for folder in folders for arg in (folder, str(Path(folder) / "identity" / "identity_dag.py"))]
    env = {**os.environ, "PYTHONHASHSEED": seed}
    command = [sys.executable, "-c", PROBE, *args]
    return subprocess.Popen(command, stdout=PIPE, stderr=PIPE, text=True, env=env)


@pytest.fixture(scope="module")
def probes(tmp_path_factory) -> tuple[list[dict], dict[str, str]]:
    """Every seed's report over the DAG as written, and over the changed copies (each copy in
    one of the five processes, which run side by side)."""
    changed = _changed_copies(tmp_path_factory.mktemp("changed"))
    shares = [[str(DAGS)] for _ in SEEDS]
    for n, folder in enumerate(changed.values()):
        shares[n % len(SEEDS)].append(folder)
    running = [_probe(seed, folders) for seed, folders in zip(SEEDS, shares)]
    reports = []
    for seed, process in zip(SEEDS, running):
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"PYTHONHASHSEED={seed}: {err[-3000:]}"
        reports.append(json.loads(out.strip().splitlines()[-1]))
    return reports, changed


def test_every_process_gets_the_same_identity(probes):
    reports, _ = probes
    written = [report[str(DAGS)] for report in reports]
    assert set(written[0]) == TASKS
    for task in TASKS:
        for key in ("spec_hash", "resume_key", "fingerprints"):
            seen = {json.dumps(report[task][key]) for report in written}
            assert len(seen) == 1, f"task {task}: {key} differs between hash seeds {SEEDS}: {sorted(seen)}"
        assert all(written[0][task]["fingerprints"]), f"task {task}: a callable has no fingerprint"


def test_the_pickled_bytes_alone_would_differ_between_processes(probes):
    # The problem the fingerprint solves: the same file, pickled in processes with other seeds.
    reports, _ = probes
    written = [report[str(DAGS)] for report in reports]
    for task in ("functions", "lambdas", "partials", "closures"):
        assert len({report[task]["pickled"][0] for report in written}) > 1, task


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_real_change_gives_a_new_identity_to_exactly_the_tasks_that_read_it(probes, change):
    reports, changed = probes
    expected = CHANGES[change][3]
    (report,) = [report for report in reports if changed[change] in report]
    before, after = report[str(DAGS)], report[changed[change]]
    moved = {task for task in TASKS if after[task]["spec_hash"] != before[task]["spec_hash"]}
    assert moved == expected, f"{change}: the spec hashes of {sorted(moved)} changed, not {sorted(expected)}"
    assert all(after[task]["resume_key"] != before[task]["resume_key"] for task in expected)


def _load_as_airflow_does(path: Path):
    import importlib.machinery
    import importlib.util

    from airflow.utils.file import get_unique_dag_module_name

    name = get_unique_dag_module_name(str(path))
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    module = importlib.util.module_from_spec(importlib.util.spec_from_loader(name, loader))
    sys.modules[name] = module
    try:
        loader.exec_module(module)
    finally:
        del sys.modules[name]
    return module


def test_where_the_dag_file_lies_does_not_count(tmp_path):
    # Versioned bundles put one DAG file at another path per version: Airflow's module name
    # (unusual_prefix_<sha1 of the path>_...) changes with it, what the user wrote does not.
    text = "LABELS = {'a', 'b'}\nNAME = __name__\ndef post(row):\n    return {'ok': row['x'] in LABELS, 'by': NAME}\n"
    paths = [tmp_path / folder / "dag.py" for folder in ("v1", "v2", "v3")]
    for path, body in zip(paths, (text, text, text.replace("'b'", "'c'"))):
        path.parent.mkdir()
        path.write_text(body)
    first, second, changed = (fingerprint(_load_as_airflow_does(path).post) for path in paths)
    assert first == second != changed


def test_code_passed_by_reference_counts_its_module_source_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "raydllm_ref_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "tasks.py").write_text("raise RuntimeError('imported')\ndef pre(row):\n    return row\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    before = fingerprint("raydllm_ref_pkg.tasks:pre")
    assert "raydllm_ref_pkg" not in sys.modules and "raydllm_ref_pkg.tasks" not in sys.modules
    (package / "tasks.py").write_text("raise RuntimeError('imported')\ndef pre(row):\n    return dict(row)\n")
    assert fingerprint("raydllm_ref_pkg.tasks:pre") != before
    # Not found on this side (only the cluster has it): the path alone, the same every time.
    assert fingerprint("cluster_only.tasks:pre") == fingerprint("cluster_only.tasks:pre")


def test_a_value_with_no_canonical_form_is_refused_not_skipped():
    import threading

    lock = threading.Lock()

    def holds_a_lock(row):
        with lock:
            return row

    with pytest.raises(FingerprintError, match="a lock cannot be fingerprinted"):
        fingerprint(holds_a_lock)


def test_the_spec_hash_counts_a_callable_by_its_fingerprint_else_by_its_bytes():
    from airflow_provider_raydatallm.job.spec import CallableSpec, JobSpec
    from airflow_provider_raydatallm.operators import _jobs

    def spec(pickled: str, identity: str | None) -> JobSpec:
        post = CallableSpec(name="postprocess", pickled=pickled, python_version="3.11", fingerprint=identity)
        return JobSpec.model_validate({
            "input": {"uris": ["/in.csv"], "format": "csv"}, "output": {"uri": "/out"}, "postprocess": post,
            "processor": {"type": "vLLMEngineProcessorConfig", "kwargs": {"model_source": "m"}},
        })  # fmt: skip

    assert _jobs.spec_hash(spec("AAAA", "f1")) == _jobs.spec_hash(spec("BBBB", "f1"))  # other bytes, same code
    assert _jobs.spec_hash(spec("AAAA", "f1")) != _jobs.spec_hash(spec("AAAA", "f2"))
    assert _jobs.spec_hash(spec("AAAA", None)) != _jobs.spec_hash(spec("BBBB", None))  # no fingerprint: the bytes


def test_a_cached_helper_and_a_helper_package_count_by_their_code(tmp_path):
    """A change inside an ``@functools.lru_cache`` helper, or inside a submodule reached as
    ``pkg.sub.fn``, is a real change: the identity must move with it."""
    import importlib.util
    import sys

    from airflow_provider_raydatallm.fingerprint import fingerprint

    def load(folder, text, helper):
        (folder / "pkg").mkdir(parents=True)
        (folder / "pkg" / "__init__.py").write_text("")
        (folder / "pkg" / "sub.py").write_text(f"def fn(t):\n    return t.{helper}()\n")
        (folder / "dag.py").write_text(
            "import functools\nimport pkg.sub\n@functools.lru_cache\ndef norm(t):\n"
            f"    return t.{text}()\ndef pre(row):\n    return pkg.sub.fn(norm(row['x']))\n"
        )
        sys.path.insert(0, str(folder))
        try:
            for name in [m for m in sys.modules if m == "pkg" or m.startswith("pkg.")]:
                del sys.modules[name]
            spec = importlib.util.spec_from_file_location("unusual_prefix_" + "b" * 40 + "_dag", folder / "dag.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            return fingerprint(module.pre)
        finally:
            sys.path.remove(str(folder))

    base = load(tmp_path / "a", "lower", "strip")
    assert load(tmp_path / "b", "lower", "strip") == base  # the same code in another folder: the same identity
    assert load(tmp_path / "c", "upper", "strip") != base  # the cached helper changed
    assert load(tmp_path / "d", "lower", "title") != base  # the package's submodule changed
