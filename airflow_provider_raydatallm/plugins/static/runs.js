"use strict";
const COLUMNS = [
  { key: "dag_id", label: "DAG" },
  { key: "run_id", label: "Run" },
  { key: "task_id", label: "Task" },
  { key: "map_index", label: "Map index", num: true, fmt: (v) => (v >= 0 ? v : "") },
  { key: "state", label: "State", render: (r) => RDL.el("span", { class: `state ${r.state || "none"}` }, r.state || "none") },
  { key: "model", label: "Model" },
  { key: "progress", label: "Progress", sortable: false, render: (r) => (r.progress ? RDL.progressText(r.progress) : "") },
  { key: "rows_in", label: "Rows in", num: true },
  { key: "rows_out", label: "Rows out", num: true },
  { key: "error_rows", label: "Error rows", num: true },
  { key: "input_tokens", label: "Input tokens", num: true },
  { key: "output_tokens", label: "Output tokens", num: true },
  { key: "rows_per_second", label: "Rows/s", num: true, fmt: RDL.rate },
  { key: "output_tokens_per_second", label: "Output tokens/s", num: true, fmt: RDL.rate },
  { key: "startup_seconds", label: "Start-up s", num: true, fmt: (v) => RDL.num(v, 1) },
  { key: "inference_seconds", label: "Inference s", num: true, fmt: (v) => RDL.num(v, 1) },
  { key: "phases", label: "Where the time went", sortable: false, render: (r) => RDL.phasesBar(r.phases) },
  { key: "run_after", label: "Run after", fmt: RDL.when },
  { key: "output_uri", label: "Output" },
  { key: "links", label: "Links", sortable: false, render: links },
];
let rows = [];
let sort = { key: "run_after", dir: -1 };

function links(r) {
  const base = RDL.uiBase() + r.ti_path;
  const span = RDL.el("span");
  span.append(RDL.el("a", { href: base, target: "_top", class: "ti-link" }, "task"), " · ",
              RDL.el("a", { href: `${base}/plugin/ray-job`, target: "_top" }, "Ray job tab"));
  if (r.dashboard_url) span.append(" · ", RDL.el("a", { href: r.dashboard_url, target: "_blank", rel: "noopener" }, "dashboard"));
  return span;
}

function header() {
  const tr = RDL.el("tr");
  for (const c of COLUMNS) {
    const th = RDL.el("th", { class: c.num ? "num" : "", "data-key": c.key }, c.label);
    if (c.key === sort.key) th.classList.add(sort.dir > 0 ? "sorted-asc" : "sorted-desc");
    if (c.sortable !== false) th.addEventListener("click", () => {
      sort = { key: c.key, dir: sort.key === c.key ? -sort.dir : (c.num ? -1 : 1) };
      render();
    });
    tr.append(th);
  }
  const thead = document.querySelector("#runs thead");
  thead.replaceChildren(tr);
}

function compare(a, b) {
  const x = a[sort.key], y = b[sort.key];
  if (x === y) return 0;
  if (x === null || x === undefined) return 1;
  if (y === null || y === undefined) return -1;
  return (x < y ? -1 : 1) * sort.dir;
}

function render() {
  header();
  const body = document.querySelector("#runs tbody");
  const sorted = [...rows].sort(compare);
  body.replaceChildren(...sorted.map((r) => {
    const tr = RDL.el("tr", { "data-dag": r.dag_id, "data-run": r.run_id, "data-task": r.task_id, "data-map-index": r.map_index });
    for (const c of COLUMNS) {
      const v = r[c.key];
      const content = c.render ? c.render(r) : (c.fmt ? c.fmt(v) : (c.num ? RDL.num(v) : (v ?? "")));
      tr.append(RDL.el("td", { class: c.num ? "num" : "", "data-col": c.key }, content));
    }
    return tr;
  }));
  if (!sorted.length) body.append(RDL.el("tr", {}, RDL.el("td", { colspan: COLUMNS.length, class: "muted" }, "No batch task instances match.")));
}

function chart(dagId, points) {
  // Rows/s (left axis, line) and error rate (right axis, %) per run, oldest to newest.
  const W = 460, H = 170, L = 48, R = 44, T = 12, B = 28;
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("width", W); svg.setAttribute("height", H); svg.setAttribute("role", "img");
  svg.setAttribute("aria-label", `rows per second and error rate of ${dagId} by run`);
  const add = (tag, attrs, text) => {
    const e = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    svg.append(e); return e;
  };
  const n = points.length;
  const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
  const maxRate = Math.max(...points.map((p) => p.rows_per_second || 0), 0.0001);
  const maxErr = Math.max(...points.map((p) => p.error_rate || 0), 0.05);
  const yRate = (v) => H - B - ((v || 0) / maxRate) * (H - T - B);
  const yErr = (v) => H - B - ((v || 0) / maxErr) * (H - T - B);
  add("line", { x1: L, y1: H - B, x2: W - R, y2: H - B, stroke: "currentColor", "stroke-opacity": 0.3 });
  add("text", { x: L - 6, y: T + 8, "text-anchor": "end" }, RDL.rate(maxRate));
  add("text", { x: L - 6, y: H - B, "text-anchor": "end" }, "0");
  add("text", { x: W - R + 6, y: T + 8 }, `${(maxErr * 100).toFixed(0)}%`);
  add("text", { x: W - R + 6, y: H - B }, "0%");
  const path = (ys, color, cls) => {
    const pts = points.map((p, i) => `${x(i)},${ys(p)}`).join(" ");
    add("polyline", { points: pts, fill: "none", stroke: color, "stroke-width": 2, class: cls });
    points.forEach((p, i) => {
      const c = add("circle", { cx: x(i), cy: ys(p), r: 3.5, fill: color, class: `${cls}-point` });
      const t = document.createElementNS(ns, "title");
      t.textContent = `${p.run_id}\n${RDL.when(p.run_after)}\n${RDL.rate(p.rows_per_second)} rows/s, ${(p.error_rate * 100).toFixed(1)}% error rows, ${p.rows_in} rows in ${p.tasks} task(s)`;
      c.append(t);
      if (n === 1) {  // a single run: say its value beside its dot
        const label = cls === "rate" ? `${RDL.rate(p.rows_per_second)} rows/s` : `${(p.error_rate * 100).toFixed(1)}% errors`;
        add("text", { x: x(i) + 8, y: ys(p) + (cls === "rate" ? -6 : 14), class: `${cls}-value` }, label);
      }
    });
  };
  path((p) => yRate(p.rows_per_second), "#2b6cb0", "rate");
  path((p) => yErr(p.error_rate), "#c53030", "err");
  if (n) {
    add("text", { x: L, y: H - 8 }, RDL.when(points[0].run_after));
    if (n > 1) add("text", { x: W - R, y: H - 8, "text-anchor": "end" }, RDL.when(points[n - 1].run_after));
  }
  const box = RDL.el("div", { class: "chart", "data-dag": dagId, "data-points": n });
  box.append(RDL.el("div", {}, RDL.el("strong", {}, dagId), " ",
    RDL.el("span", { class: "legend" }, RDL.el("span", { class: "rate" }, "● rows/s"), "  ", RDL.el("span", { class: "err" }, "● error rate"),
      `  (${n} run${n === 1 ? "" : "s"})`)));
  box.append(svg);
  return box;
}

function query() {
  const f = new FormData(document.getElementById("filters"));
  const q = new URLSearchParams();
  for (const [k, v] of f.entries()) {
    if (!v) continue;
    if (k === "since") q.set(k, `${v}T00:00:00Z`);
    else if (k === "until") q.set(k, `${v}T23:59:59Z`);
    else q.set(k, v);
  }
  return q;
}

async function load() {
  const status = document.getElementById("status");
  status.textContent = "loading…";
  try {
    const q = query();
    const data = await RDL.getJSON(`api/runs?${q}`);
    rows = data.runs;
    const dagSelect = document.getElementById("f-dag");
    const chosen = dagSelect.value;
    dagSelect.replaceChildren(RDL.el("option", { value: "" }, "all DAGs"),
      ...data.dag_ids.map((d) => RDL.el("option", { value: d }, d)));
    dagSelect.value = chosen;
    const charts = document.getElementById("charts");
    const entries = Object.entries(data.series);
    charts.replaceChildren(...entries.map(([d, pts]) => chart(d, pts)));
    if (!entries.length) charts.append(RDL.el("div", { class: "muted" }, "No finished runs to chart yet."));
    render();
    status.textContent = `${rows.length} task instance${rows.length === 1 ? "" : "s"}` +
      (rows.length >= data.limit ? ` (the newest ${data.limit})` : "") + `, updated ${new Date().toLocaleTimeString()}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    status.textContent = "";
    status.append(RDL.el("span", { class: "error" }, `Could not load runs: ${err.message}`));
  }
}

document.getElementById("filters").addEventListener("submit", (e) => { e.preventDefault(); load(); });
// Every 30 s; every 5 s while a task of the page runs (its progress moves).
async function refresh() {
  await load();
  const running = rows.some((r) => ["running", "deferred", "queued", "scheduled"].includes(r.state));
  setTimeout(refresh, running ? 5000 : 30000);
}
refresh();
