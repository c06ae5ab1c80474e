"""The UI plugin in a real browser: headless Debian Chromium driven by Playwright, against the
session's real Airflow (api-server, scheduler, triggerer, LocalExecutor) with the provider
installed, and the real Ray head. Also the metrics where Airflow already looks: asset event
extra, OpenLineage events (file transport), and the plugin's API under DAG-level rules.

Screenshots go to .artifacts/screenshots/ (docs/images/ holds two of them).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

from demo_helpers import write_jsonl

from airflow_provider_raydatallm.hooks.ray import RayHook, RayJobStatus
from tests.conftest import ROOT
from tests.lifecycle.conftest import DECOY_SECRET, NO_XCOM_USER, PASSWORDS

pytestmark = [pytest.mark.lifecycle, pytest.mark.browser]
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / ".artifacts" / "screenshots"
# Chromium on a machine with no network: no background fetches, no sandbox (root in CI).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]  # fmt: skip


@pytest.fixture(autouse=True)
def _ray(ray_conn):
    """The tests' own RayHook reads ray_default from the environment."""


def _input(path: Path, rows: int, delay: float, failing: set[int]) -> str:
    records = [{"id": i, "item": f"friend {i}", "delay": delay, "fail": i in failing} for i in range(1, rows + 1)]
    return str(write_jsonl(path, records))


def _run(real_airflow, dag_id: str, tmp_path: Path, name: str, rows: int, delay: float, failing: set[int], partitions: int = 1) -> str:
    conf = {
        "input": _input(tmp_path / f"{name}.jsonl", rows, delay, failing),
        "output": str(tmp_path / f"{name}-out"),
        "partitions": partitions,
    }
    return real_airflow.trigger(dag_id, conf)


@pytest.fixture(scope="module")
def pressed_trigger(real_airflow) -> Iterator[dict[str, Any]]:
    """Trigger pressed on the sentiment example in the UI, before the module's other tests:
    its run (an engine start, a minute on 2 cores) goes on while they run, and the last test
    waits for it. Airflow 3.3's dialog fills in the current time as the logical date; runs
    without one are the drills' REST triggers and tests/unit/test_example_dags_parse.py.
    What went wrong here is raised by that test, not by every test of the module."""
    dag = "example_daily_sentiment"
    pressed: dict[str, Any] = {"dag": dag, "run_id": None, "error": None}
    try:
        real_airflow.wait_for_dag(dag)
        before = {r["dag_run_id"] for r in real_airflow._request("GET", f"/api/v2/dags/{dag}/dagRuns")["dag_runs"]}
        pw, browser = _browser()
        try:
            page = browser.new_page(viewport={"width": 1500, "height": 950})
            _login(page, real_airflow.base, "admin")
            page.goto(f"{real_airflow.base}/dags/{dag}")
            page.get_by_role("button", name="Trigger Dag").click()
            dialog = page.get_by_role("dialog")
            # The run parameters form, as a user edits it: one partition of 12 posts (one engine
            # on this 2-core machine instead of two side by side).
            dialog.locator("input[name='element_num_partitions']").fill("1")
            dialog.locator("input[name='element_posts_per_day']").fill("12")
            dialog.get_by_role("button", name="Trigger", exact=True).click()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and pressed["run_id"] is None:
                runs = real_airflow._request("GET", f"/api/v2/dags/{dag}/dagRuns")["dag_runs"]
                pressed["run_id"] = next((r["dag_run_id"] for r in runs if r["dag_run_id"] not in before), None)
                time.sleep(1)
        finally:
            browser.close()
            pw.stop()
    except Exception as err:  # noqa: BLE001 (raised by the test that needs it)
        pressed["error"] = err
    yield pressed
    if pressed["run_id"]:  # the test that waits for it was deselected or failed early: end the run here
        try:
            real_airflow.wait_run(dag, pressed["run_id"], {"success", "failed"}, timeout=300)
        except AssertionError:
            real_airflow.mark_run(dag, pressed["run_id"], "failed")


@pytest.fixture(scope="module")
def finished(real_airflow, tmp_path_factory, pressed_trigger) -> dict[str, Any]:
    """One finished run of each UI DAG: 8 rows, rows 3 and 6 fail in the preprocess."""
    tmp = tmp_path_factory.mktemp("ui")
    runs = {dag: _run(real_airflow, dag, tmp, dag, 8, 0, {3, 6}) for dag in ("raydllm_ui", "raydllm_ui_hidden")}
    for dag, run_id in runs.items():
        ti = real_airflow.wait_ti(dag, run_id, "ask", {"success", "failed"}, timeout=600)
        assert ti["state"] == "success", real_airflow.task_log(dag, run_id, "ask")
    return {"runs": runs, "tmp": tmp}


def _browser():
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
    return pw, browser


def _login(page, base: str, username: str) -> None:
    page.goto(f"{base}/")
    page.wait_for_selector("input[name='username']", timeout=60_000)
    page.fill("input[name='username']", username)
    page.fill("input[name='password']", PASSWORDS[username])
    page.click("button[type='submit']")
    page.wait_for_url(lambda url: "/auth/login" not in url and "/login" not in url, timeout=60_000)


def _plugin_frame(page, title: str):
    """The plugin's view inside an Airflow UI page (the iframe Airflow titles with the view's
    name), once its data has loaded. A frame locator: it follows the iframe if React
    re-mounts it."""
    frame = page.frame_locator(f"iframe[title='{title}']")
    frame.locator("body[data-loaded='true']").wait_for(state="attached", timeout=60_000)
    return frame


def _cell(frame, row_selector: str, col: str) -> str:
    return frame.locator(f"{row_selector} td[data-col='{col}']").inner_text().strip()


def _column(frame, col: str) -> list[int]:
    """The numbers of one column of the runs table, top to bottom (blank cells skipped)."""
    texts = frame.locator(f"#runs tbody td[data-col='{col}']").all_inner_texts()
    return [int(t.replace(",", "")) for t in texts if t.strip()]


def test_plugin_api_follows_auth_and_dag_permissions(real_airflow, finished):
    runs = finished["runs"]
    status, body = real_airflow.get("/raydatallm/api/runs", "admin")
    assert status == 200, body
    seen = {(r["dag_id"], r["run_id"]) for r in body["runs"]}
    assert {("raydllm_ui", runs["raydllm_ui"]), ("raydllm_ui_hidden", runs["raydllm_ui_hidden"])} <= seen

    status, body = real_airflow.get("/raydatallm/api/runs", "outsider")
    assert status == 200, body
    assert ("raydllm_ui", runs["raydllm_ui"]) in {(r["dag_id"], r["run_id"]) for r in body["runs"]}
    assert not [r for r in body["runs"] if r["dag_id"] == "raydllm_ui_hidden"], body["runs"]
    assert "raydllm_ui_hidden" not in body["series"] and "raydllm_ui_hidden" not in body["dag_ids"]
    status, body = real_airflow.get("/raydatallm/api/runs?dag_id=raydllm_ui_hidden", "outsider")
    assert status == 200 and body["runs"] == [], body

    # Filters: DAG and state, and a date range on the run's run_after.
    status, body = real_airflow.get("/raydatallm/api/runs?dag_id=raydllm_ui&state=success", "admin")
    assert body["runs"] and {(r["dag_id"], r["state"]) for r in body["runs"]} == {("raydllm_ui", "success")}
    assert {"raydllm_ui", "raydllm_ui_hidden"} <= set(body["dag_ids"])  # the DAG filter's choices stay whole
    status, body = real_airflow.get("/raydatallm/api/runs?since=2099-01-01T00:00:00Z", "admin")
    assert status == 200 and body["runs"] == []
    status, body = real_airflow.get("/raydatallm/api/runs?until=2000-01-01T00:00:00Z", "admin")
    assert status == 200 and body["runs"] == []

    query = urlencode({"dag_id": "raydllm_ui_hidden", "run_id": runs["raydllm_ui_hidden"], "task_id": "ask", "map_index": -1})
    status, _ = real_airflow.get(f"/raydatallm/api/ray-job?{query}", "outsider")
    assert status == 403
    status, body = real_airflow.get(f"/raydatallm/api/ray-job?{query}", "admin")
    assert status == 200 and body["job"]["status"] == "SUCCEEDED", body

    # No session, no data: the plugin sits behind Airflow's auth.
    import urllib.error
    import urllib.request

    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"{real_airflow.base}/raydatallm/api/runs", timeout=30)
    assert err.value.code in (401, 403)
    # Nothing the plugin answers carries the Ray token or the endpoint key.
    token = json.loads(real_airflow.env["AIRFLOW_CONN_RAY_DEFAULT"])["password"]
    for path in ("/raydatallm/api/runs", f"/raydatallm/api/ray-job?{query}"):
        assert token not in json.dumps(real_airflow.get(path, "admin")[1])


def test_asset_event_and_openlineage_carry_the_metrics(real_airflow, finished):
    run_id = finished["runs"]["raydllm_ui"]
    result = real_airflow.xcom("raydllm_ui", run_id, "ask")
    m = result["metrics"]
    assert (m["rows_in"], m["rows_out"], m["error_rows"]) == (8, 6, 2)
    assert [e["row_id"] for e in result["first_errors"]] == ["3", "6"]
    assert "marked to fail" in result["first_errors"][0]["error"]

    events = real_airflow._request("GET", "/api/v2/assets/events?source_dag_id=raydllm_ui&limit=100")["asset_events"]
    mine = [e for e in events if e["source_run_id"] == run_id]
    assert len(mine) == 1, events
    extra = mine[0]["extra"]
    assert (extra["rows_in"], extra["rows_out"], extra["error_rows"]) == (8, 6, 2)
    assert extra["model"] == result["model"] and extra["output_uri"] == result["output_uri"]
    assert extra["output_tokens"] == m["output_tokens"] > 0

    log = real_airflow.task_log("raydllm_ui", run_id, "ask")
    assert "0.0 rows/s" not in log and " rows/s" in log

    path = real_airflow.home / "openlineage.jsonl"
    deadline = time.monotonic() + 60
    complete: list[dict[str, Any]] = []
    while time.monotonic() < deadline and not complete:
        lines = path.read_text().splitlines() if path.exists() else []
        events = [json.loads(line) for line in lines if line.strip()]
        complete = [e for e in events if e.get("eventType") == "COMPLETE" and e["job"]["name"] == "raydllm_ui.ask"
                    and e["run"]["facets"].get("rayDataLLM", {}).get("raySubmissionId") == result["submission_id"]]  # fmt: skip
        time.sleep(1)
    assert complete, f"no COMPLETE OpenLineage event for raydllm_ui.ask in {path}"
    event = complete[-1]
    assert [(d["namespace"], d["name"]) for d in event["inputs"]] == [("file", result["input_uris"][0])]
    assert [(d["namespace"], d["name"]) for d in event["outputs"]] == [("file", result["output_uri"])]
    assert event["outputs"][0]["outputFacets"]["outputStatistics"]["rowCount"] == 6
    facet = event["run"]["facets"]["rayDataLLM"]
    assert facet["model"] == result["model"] and facet["rowsIn"] == 8 and facet["errorRows"] == 2


def test_runs_page_and_ray_job_tab_in_a_browser(real_airflow, finished):
    SHOTS.mkdir(parents=True, exist_ok=True)
    run_id = finished["runs"]["raydllm_ui"]
    result = real_airflow.xcom("raydllm_ui", run_id, "ask")
    # A second run that takes a while, in 4 blocks, so the tab can watch it move.
    slow = _run(real_airflow, "raydllm_ui", finished["tmp"], "slow", 16, 2.5, {5}, partitions=4)

    pw, browser = _browser()
    errors: list[str] = []
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        failed: list[str] = []
        page.on("response", lambda r: failed.append(f"{r.status} {r.url}") if r.status >= 400 else None)
        page.on("console", lambda msg: errors.append(f"console {msg.type}: {msg.text} ({failed[-3:]})") if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(f"page error: {exc}"))
        _login(page, real_airflow.base, "admin")
        # Before signing in, the UI asks the API who is signed in and gets a 401 (then shows
        # the login form): the only errors allowed there. Count what happens once signed in.
        assert all("401" in e for e in errors), errors
        errors.clear()

        # The nav page: the finished run's row shows the numbers of its XCom.
        page.goto(f"{real_airflow.base}/plugin/llm-batch-runs")
        frame = _plugin_frame(page, "LLM batch runs")
        row = f"tr[data-dag='raydllm_ui'][data-run='{run_id}']"
        frame.locator(row).wait_for(timeout=30_000)
        m = result["metrics"]
        for col, want in (("rows_in", m["rows_in"]), ("rows_out", m["rows_out"]), ("error_rows", m["error_rows"]),
                          ("input_tokens", m["input_tokens"]), ("output_tokens", m["output_tokens"])):  # fmt: skip
            assert _cell(frame, row, col).replace(",", "") == str(want), col
        assert _cell(frame, row, "model") == result["model"]
        assert _cell(frame, row, "state") == "success"
        assert frame.locator(".chart[data-dag='raydllm_ui'] circle.rate-point").count() >= 1
        # Where the run's time went: a bar of its phases (XCom metrics.phases), named in its title.
        bar = frame.locator(f"{row} td[data-col='phases'] .phases")
        assert bar.count() == 1 and bar.locator(".phase").count() >= 4
        title = bar.get_attribute("title")
        for phase in ("submission", "driver start", "inference", "commit", "teardown"):
            assert f"{phase}: " in title, title
        total = float(title.rstrip().rsplit("total: ", 1)[1].split()[0])
        assert abs(total - sum(m["phases"].values())) < 0.11, title
        assert "s outside inference" in _cell(frame, row, "phases")
        # Sorting by a column reorders the table.
        frame.locator("th[data-key='rows_in']").click()
        assert "sorted-desc" in frame.locator("th[data-key='rows_in']").get_attribute("class")
        shown = _column(frame, "rows_in")
        assert len(shown) >= 2 and shown == sorted(shown, reverse=True), shown
        frame.locator("th[data-key='rows_in']").click()
        assert _column(frame, "rows_in") == sorted(shown), "a second click sorts ascending"
        page.screenshot(path=str(SHOTS / "llm-batch-runs.png"))

        # The runs page names the running task's progress (the job's own count, no Prometheus here).
        job = _wait_running_job("raydllm_ui", slow)
        page.goto(f"{real_airflow.base}/plugin/llm-batch-runs")
        frame = _plugin_frame(page, "LLM batch runs")
        cell = frame.locator(f"tr[data-dag='raydllm_ui'][data-run='{slow}'] td[data-col='progress']")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and " / 16 rows" not in (cell.all_inner_texts() or [""])[0]:
            time.sleep(1)
        assert " / 16 rows" in cell.inner_text(), cell.inner_text()

        # The Ray job tab of the running task: rows done rise with a rate and a time left,
        # and the stage progress moves, while we watch.
        page.goto(f"{real_airflow.base}/dags/raydllm_ui/runs/{slow}/tasks/ask/plugin/ray-job")
        frame = _plugin_frame(page, "Ray job")
        assert frame.locator("#submission-id .v").inner_text() == job
        seen, rows, etas = _watch_progress(frame, timeout=240)
        # Seen moving: more than one figure, rising, one of them mid-way (the job may end while we watch).
        assert len(seen) >= 2 and seen == sorted(seen) and any(0 < b < 4 for b in seen), f"inference progress did not advance: {seen}"
        assert len(rows) >= 2 and rows == sorted(set(rows)) and any(0 < r < 16 for r in rows), f"rows done did not rise: {rows}"
        assert any(eta.startswith("about ") for eta in etas), f"no time left shown while running: {etas}"
        page.screenshot(path=str(SHOTS / "ray-job-tab-running.png"))

        ti = real_airflow.wait_ti("raydllm_ui", slow, "ask", {"success", "failed"}, timeout=600)
        assert ti["state"] == "success", real_airflow.task_log("raydllm_ui", slow, "ask")
        frame.locator("#m-rows-in").wait_for(timeout=60_000)
        assert frame.locator("#m-rows-in .v").inner_text() == "16"
        assert frame.locator("#m-error-rows .v").inner_text() == "1"
        assert frame.locator("#first-errors tbody tr").count() == 1
        assert frame.locator("#job-state").inner_text() == "SUCCEEDED"
        phases = real_airflow.xcom("raydllm_ui", slow, "ask")["metrics"]["phases"]
        assert frame.locator("#phases tbody tr").count() == len(phases)
        shown = float(frame.locator("#phases tbody tr[data-phase='inference'] td").nth(1).inner_text())
        assert abs(shown - phases["inference"]) < 0.051
        page.screenshot(path=str(SHOTS / "ray-job-tab-finished.png"))

        # A viewer without access to a DAG does not see its runs on the page.
        other = browser.new_page(viewport={"width": 1500, "height": 950})
        other.on("pageerror", lambda exc: errors.append(f"page error (outsider): {exc}"))
        _login(other, real_airflow.base, "outsider")
        other.goto(f"{real_airflow.base}/plugin/llm-batch-runs")
        frame = _plugin_frame(other, "LLM batch runs")
        assert frame.locator("tr[data-dag='raydllm_ui']").count() >= 1
        assert frame.locator("tr[data-dag='raydllm_ui_hidden']").count() == 0
    except Exception:
        for i, open_page in enumerate(p for context in browser.contexts for p in context.pages):
            open_page.screenshot(path=str(SHOTS / f"failure-{i}.png"))
        raise
    finally:
        browser.close()
        pw.stop()
    assert not errors, errors


def _wait_running_job(dag_id: str, run_id: str, timeout: float = 300) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for job in RayHook().list_jobs():
            if job.metadata.get("airflow_dag_id") == dag_id and job.metadata.get("airflow_run_id") == run_id:
                if job.status is RayJobStatus.RUNNING:
                    return job.submission_id or ""
        time.sleep(1)
    raise AssertionError(f"no running Ray job for {dag_id} {run_id}")


def _watch_progress(frame, timeout: float) -> tuple[list[int], list[int], list[str]]:
    """What the tab shows while the job runs, each time it changes: blocks done by the
    inference stage (the fused preprocess + HTTP request stage), rows done by the job's
    own count, and the time left; until both have moved twice and a time left was shown,
    or the job ended."""
    seen: list[int] = []
    rows: list[int] = []
    etas: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        cells = frame.locator("tr[data-stage*='HttpRequest'] td[data-col='blocks']").all_text_contents()
        if cells:
            done = int(cells[0].split("/")[0])
            if not seen or done != seen[-1]:
                seen.append(done)
        shown = frame.locator("#p-rows .v").all_text_contents()
        if shown:
            done = int(shown[0].split("/")[0].replace(",", ""))
            if not rows or done != rows[-1]:
                rows.append(done)
            eta = frame.locator("#p-eta .v").all_text_contents()
            if eta and (not etas or eta[0] != etas[-1]):
                etas.append(eta[0])
        if len(seen) >= 3 and len(rows) >= 3 and any(e.startswith("about ") for e in etas):
            break
        if frame.locator("body[data-live='false']").count() and seen:
            break
        time.sleep(0.5)
    return seen, rows, etas


def test_plugin_trusts_nothing_it_reads_from_xcom(real_airflow, finished):
    """The connection comes from the task's definition, a job is shown only to the task
    instance it was submitted for, links are http(s) only, and error rows only for users
    who may read the task's XCom. Each checked with a user who may and one who may not."""
    runs = finished["runs"]
    ui = urlencode({"dag_id": "raydllm_ui", "run_id": runs["raydllm_ui"], "task_id": "ask", "map_index": -1})
    # Error rows hold row data: admin reads them, noxcom (task instances yes, XCom no) does not.
    status, body = real_airflow.get(f"/raydatallm/api/ray-job?{ui}", "admin")
    assert status == 200 and [e["row_id"] for e in body["task_instance"]["result"]["first_errors"]] == ["3", "6"], body
    assert body["errors_hidden"] is False and body["job"]["status"] == "SUCCEEDED"
    status, body = real_airflow.get(f"/raydatallm/api/ray-job?{ui}", NO_XCOM_USER)
    assert status == 200 and "first_errors" not in body["task_instance"]["result"] and body["errors_hidden"] is True, body
    assert body["task_instance"]["result"]["metrics"]["error_rows"] == 2  # the counts stay visible
    assert "marked to fail" not in json.dumps(body)

    # Forged XCom on the hidden DAG's task: another connection (a decoy whose password the
    # server must never send), a javascript: link, and then another task's job.
    dag, run = "raydllm_ui_hidden", runs["raydllm_ui_hidden"]
    hidden = urlencode({"dag_id": dag, "run_id": run, "task_id": "ask", "map_index": -1})
    path = f"/api/v2/dags/{dag}/dagRuns/{run}/taskInstances/ask/xcomEntries/ray_job"
    own = real_airflow.xcom(dag, run, "ask", "ray_job")
    forged = {**own, "ray_conn_id": "ray_decoy", "dashboard_url": "javascript:alert(document.cookie)"}
    real_airflow._request("PATCH", path, {"value": forged, "map_index": -1})
    status, body = real_airflow.get(f"/raydatallm/api/ray-job?{hidden}", "admin")
    # ray_decoy points at a closed port: the job's status came through the task's own ray_default.
    assert status == 200 and body["ray_error"] is None and body["job"]["status"] == "SUCCEEDED", body
    assert body["job"]["dashboard_url"].startswith("http://127.0.0.1:") and body["job"]["dashboard_url"].endswith(own["submission_id"])
    status, listing = real_airflow.get(f"/raydatallm/api/runs?dag_id={dag}", "admin")
    assert [r["dashboard_url"] for r in listing["runs"] if r["run_id"] == run] == [None], listing["runs"]
    assert DECOY_SECRET not in json.dumps(body) + json.dumps(listing)

    other = real_airflow.xcom("raydllm_ui", runs["raydllm_ui"], "ask", "ray_job")["submission_id"]
    real_airflow._request("PATCH", path, {"value": {**own, "submission_id": other}, "map_index": -1})
    status, body = real_airflow.get(f"/raydatallm/api/ray-job?{hidden}", "admin")
    assert status == 200 and body["job"] is None, body
    assert "was not submitted for this task instance" in body["ray_error"] and "'ray_default'" in body["ray_error"]
    real_airflow._request("PATCH", path, {"value": own, "map_index": -1})


def test_trigger_button_runs_the_daily_sentiment_example_and_the_runs_page_lists_it(real_airflow, pressed_trigger):
    """What a newcomer does after `make airflow` (this Airflow is started by the same
    script): press Trigger on the sentiment example in the UI (pressed_trigger, before the
    module's other tests), wait for the run to succeed, and find its partition task on the
    "LLM batch runs" page."""
    dag = pressed_trigger["dag"]
    if pressed_trigger["error"] is not None:
        raise pressed_trigger["error"]
    run_id = pressed_trigger["run_id"]
    assert run_id, "pressing Trigger made no run"
    run = real_airflow._request("GET", f"/api/v2/dags/{dag}/dagRuns/{run_id}")
    assert run["run_type"] == "manual" and (run["conf"]["num_partitions"], run["conf"]["posts_per_day"]) == (1, 12), run
    run = real_airflow.wait_run(dag, run_id, {"success", "failed"}, timeout=900)
    logs = "" if run["state"] == "success" else real_airflow.task_log(dag, run_id, "classify")[-5000:]
    assert run["state"] == "success", logs

    pw, browser = _browser()
    try:
        page = browser.new_page(viewport={"width": 1500, "height": 950})
        _login(page, real_airflow.base, "admin")
        page.goto(f"{real_airflow.base}/plugin/llm-batch-runs")
        frame = _plugin_frame(page, "LLM batch runs")
        rows = frame.locator(f"tr[data-dag='{dag}'][data-run='{run_id}']")
        rows.first.wait_for(timeout=30_000)
        assert rows.count() == 1  # one partition, one mapped task
        assert rows.first.locator("td[data-col='state']").inner_text().strip() == "success"
        assert rows.first.locator("td[data-col='rows_in']").inner_text().replace(",", "") == "12"
        # The example commits to an Iceberg table: the page names the table, the slice, the snapshot.
        shown = rows.first.locator("td[data-col='output_uri']").inner_text()
        assert re.fullmatch(r"iceberg:demo\.post_sentiment \(day=\d{4}-\d\d-\d\d, part=0\) snapshot \d+", shown), shown
        page.screenshot(path=str(SHOTS / "llm-batch-runs-example.png"))
    finally:
        browser.close()
        pw.stop()
