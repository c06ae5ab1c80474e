"use strict";
const params = new URLSearchParams(window.location.search);
const REFRESH_MS = 3000;
let timer = null;

function card(k, v, id) {
  return RDL.el("div", { class: "card", id }, RDL.el("div", { class: "v" }, v), RDL.el("div", { class: "k" }, k));
}

function progressTable(datasets, live) {
  // While the job runs, its running datasets (the pipeline through the engine) come first;
  // the small finished ones (counts, schema reads, writes) fold away, as do all of them
  // once the job has ended.
  const box = RDL.el("div", { id: "stages" });
  box.append(RDL.el("h2", {}, live ? "Ray Data progress" : "Ray Data stages"));
  if (!datasets.length) {
    box.append(RDL.el("div", { class: "muted" }, live
      ? "No Ray Data dataset has started yet (the job is reading its input or starting actors)."
      : "The Ray dashboard has no Ray Data stages for this job (it keeps a limited number)."));
    return box;
  }
  const shown = live ? datasets.filter((d) => d.state === "RUNNING" || d.state === "PENDING") : [];
  const folded = datasets.filter((d) => !shown.includes(d));
  box.append(...shown.map(datasetTable));
  if (folded.length) {
    const details = RDL.el("details", { id: "folded-datasets" },
      RDL.el("summary", { class: "small muted" }, `${folded.length} ${live ? "finished " : ""}dataset${folded.length === 1 ? "" : "s"} of this job`));
    details.append(...folded.map(datasetTable));
    box.append(details);
  }
  return box;
}

function progressView(p, live) {
  // The job's own count (its progress line, every 30 s by default): rows written so far of
  // rows in, the rate since the first block came out, and the time left at that rate.
  const box = RDL.el("div", { id: "job-progress" });
  box.append(RDL.el("h2", {}, "Inference progress"));
  if (p.reading) {
    box.append(RDL.el("div", { class: "muted", id: "p-reading" }, `Reading the input (${RDL.duration(p.elapsed_seconds)} so far).`));
    return box;
  }
  const frac = p.total ? Math.min(1, p.done / p.total) : 1;
  const eta = p.finished ? "done" : (p.eta_seconds === null || p.eta_seconds === undefined
    ? (p.done ? "rate not known yet" : "starting") : `about ${RDL.duration(p.eta_seconds)}`);
  box.append(RDL.el("div", { class: "cards" },
    card("rows done / rows in", `${RDL.num(p.done)} / ${RDL.num(p.total)}`, "p-rows"),
    card("failed rows", RDL.num(p.failed), "p-failed"),
    card("rows/s", p.rows_per_second ? RDL.rate(p.rows_per_second) : "–", "p-rate"),
    card("time left", eta, "p-eta")));
  box.append(RDL.el("div", { class: "bar wide" }, RDL.el("div", { style: `width:${(frac * 100).toFixed(1)}%` })));
  const age = p.age_seconds === undefined ? "" : `, ${RDL.duration(p.age_seconds)} ago`;
  box.append(RDL.el("div", { class: "muted small", id: "p-asof" },
    `As of the job's last progress line (elapsed ${RDL.duration(p.elapsed_seconds)}${age})` +
    (live ? "; a row counts once its block is written." : ".")));
  return box;
}

function datasetTable(ds) {
  const box = RDL.el("div", { class: "dataset" });
  const table = RDL.el("table", { class: "stages", "data-dataset": ds.dataset });
  const heads = ["Stage", "State", "Blocks done / total", "", "Rows done", "Rows (estimated total)", "Queued blocks"];
  table.append(RDL.el("thead", {}, RDL.el("tr", {}, ...heads.map((h) => RDL.el("th", {}, h)))));
  const body = RDL.el("tbody");
  for (const s of ds.stages) {
    const frac = s.blocks_total ? Math.min(1, s.blocks_done / s.blocks_total) : 0;
    const bar = RDL.el("div", { class: "bar" }, RDL.el("div", { style: `width:${(frac * 100).toFixed(1)}%` }));
    body.append(RDL.el("tr", { "data-stage": s.operator },
      RDL.el("td", {}, s.name), RDL.el("td", {}, RDL.el("span", { class: `state ${s.state}` }, s.state)),
      RDL.el("td", { class: "num", "data-col": "blocks" }, `${s.blocks_done} / ${s.blocks_total || "?"}`), RDL.el("td", {}, bar),
      RDL.el("td", { class: "num", "data-col": "rows_done" }, s.rows_done === null ? "–" : RDL.num(s.rows_done)),
      RDL.el("td", { class: "num" }, RDL.num(s.rows_total)), RDL.el("td", { class: "num" }, s.queued_blocks)));
  }
  table.append(body);
  box.append(RDL.el("div", { class: "muted small" }, `dataset ${ds.dataset}: ${ds.state}`), table);
  return box;
}

function resultView(result, errorsHidden) {
  const box = RDL.el("div", { id: "metrics" });
  const m = result.metrics;
  if (!m) return box;
  box.append(RDL.el("h2", {}, "Result"));
  const cards = RDL.el("div", { class: "cards" },
    card("rows in", RDL.num(m.rows_in), "m-rows-in"), card("rows out", RDL.num(m.rows_out), "m-rows-out"),
    card("error rows", RDL.num(m.error_rows), "m-error-rows"), card("input tokens", RDL.num(m.input_tokens), "m-input-tokens"),
    card("output tokens", RDL.num(m.output_tokens), "m-output-tokens"), card("rows/s", RDL.rate(m.rows_per_second), "m-rows-per-second"),
    card("output tokens/s", RDL.rate(m.output_tokens_per_second), "m-output-tokens-per-second"),
    card("start-up and other s", RDL.num(m.startup_seconds, 1), "m-startup"), card("inference s", RDL.num(m.inference_seconds, 1), "m-inference"));
  box.append(cards);
  const phases = Object.entries(m.phases || {}).filter(([, v]) => typeof v === "number" && v >= 0);
  if (phases.length) {
    const total = phases.reduce((a, [, v]) => a + v, 0);
    const t = RDL.el("table", { id: "phases" });
    t.append(RDL.el("thead", {}, RDL.el("tr", {}, RDL.el("th", {}, "Phase"), RDL.el("th", { class: "num" }, "s"),
      RDL.el("th", { class: "num" }, "share"))));
    t.append(RDL.el("tbody", {}, ...phases.map(([k, v]) => RDL.el("tr", { "data-phase": k },
      RDL.el("td", {}, k), RDL.el("td", { class: "num" }, v.toFixed(1)),
      RDL.el("td", { class: "num" }, total ? `${Math.round((100 * v) / total)}%` : "")))));
    box.append(RDL.el("h2", {}, "Where the time went"), RDL.phasesBar(Object.fromEntries(phases), 420), t);
  }
  if (result.table) {
    const t = result.table;
    const slice = Object.entries(t.partition || {}).map(([k, v]) => `${k}=${v}`).join(", ");
    const which = t.format === "iceberg" ? `snapshot ${t.snapshot_id}` : `version ${t.version}`;
    box.append(RDL.el("div", { class: "small", id: "output-table" }, "Table: ",
      RDL.el("code", {}, `${t.format}:${t.table}${slice ? ` (${slice})` : ""}`), `  ·  committed as ${which}`,
      `  ·  ${RDL.num(t.rows)} rows`));
  }
  box.append(RDL.el("div", { class: "small" }, result.table ? "Work directory: " : "Output: ",
    RDL.el("code", {}, result.output_uri || ""), "  ·  Error rows: ",
    RDL.el("code", {}, result.error_table ? `${result.error_table.format}:${result.error_table.table}` : (result.error_output_uri || ""))));
  const errors = result.first_errors || [];
  if (errorsHidden) box.append(RDL.el("p", { class: "muted small", id: "errors-hidden" },
    "Error rows are not shown: they hold the rows' data, and you may not read this task's XCom."));
  if (errors.length) {
    box.append(RDL.el("h2", {}, `First error rows (${errors.length} of ${RDL.num(m.error_rows)})`));
    const t = RDL.el("table", { id: "first-errors" });
    t.append(RDL.el("thead", {}, RDL.el("tr", {}, RDL.el("th", {}, "Row id"), RDL.el("th", {}, "Stage"), RDL.el("th", {}, "Error"))));
    t.append(RDL.el("tbody", {}, ...errors.map((e) => RDL.el("tr", {}, RDL.el("td", {}, e.row_id), RDL.el("td", {}, e.stage), RDL.el("td", {}, RDL.el("pre", {}, e.error))))));
    box.append(t);
  }
  return box;
}

async function load() {
  const q = new URLSearchParams({
    dag_id: params.get("dag_id") || "", run_id: params.get("run_id") || "",
    task_id: params.get("task_id") || "", map_index: params.get("map_index") || "-1",
  });
  const notice = document.getElementById("notice");
  let data;
  try {
    data = await RDL.getJSON(`api/ray-job?${q}`);
  } catch (err) {
    notice.replaceChildren(RDL.el("p", { class: "error" }, `Could not load the task instance: ${err.message}`));
    return;
  }
  const ti = data.task_instance, job = data.job;
  document.getElementById("subtitle").textContent =
    `${ti.dag_id} · ${ti.run_id} · ${ti.task_id}${ti.map_index >= 0 ? ` [${ti.map_index}]` : ""} · task ${ti.state || "none"}, try ${ti.try_number}`;
  notice.replaceChildren();
  if (!ti.is_batch) {
    notice.append(RDL.el("p", { class: "muted" }, `This task (${ti.operator}) is not a Ray Data LLM batch task.`));
    return;
  }
  if (!job) {
    notice.append(RDL.el("p", { class: "muted" }, "No Ray job yet: the task has not submitted one in this try."));
  } else {
    const status = job.status || "unknown";
    document.getElementById("job-status").replaceChildren(RDL.el("span", { class: `state ${status}`, id: "job-state" }, status));
    const cards = [card("submission id", job.submission_id, "submission-id")];
    if (job.start_time) cards.push(card("started", RDL.when(new Date(job.start_time).toISOString())));
    if (job.end_time) cards.push(card("ended", RDL.when(new Date(job.end_time).toISOString())));
    document.getElementById("job-cards").replaceChildren(...cards);
    if (job.dashboard_url) notice.append(RDL.el("p", { class: "small" }, RDL.el("a", { href: job.dashboard_url, target: "_blank", rel: "noopener" }, "Open in the Ray dashboard")));
    if (job.message && status !== "SUCCEEDED") notice.append(RDL.el("p", { class: "small muted" }, job.message));
  }
  if (data.ray_error) notice.append(RDL.el("p", { class: "error" }, `Ray cluster: ${data.ray_error}`));
  document.getElementById("progress").replaceChildren(
    ...(job && job.progress ? [progressView(job.progress, data.live)] : []),
    job && job.datasets ? progressTable(job.datasets, data.live) : "");
  document.getElementById("result").replaceChildren(ti.result ? resultView(ti.result, data.errors_hidden) : "");
  document.body.dataset.loaded = "true";
  document.body.dataset.live = data.live ? "true" : "false";
  clearTimeout(timer);
  const taskActive = ["running", "deferred", "queued", "scheduled", "up_for_retry", "restarting"].includes(ti.state);
  if (data.live || taskActive) timer = setTimeout(load, REFRESH_MS);
}

load();
