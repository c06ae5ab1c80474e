// Shared helpers of the plugin's pages (no framework, no build step).
"use strict";
const RDL = {
  num(v, digits) {
    if (v === null || v === undefined || v === "") return "";
    if (typeof v !== "number") return String(v);
    if (digits !== undefined) return v.toLocaleString(undefined, { maximumFractionDigits: digits });
    return v.toLocaleString();
  },
  rate(v) {
    // 1,234 / 12.3 / 0.188 / 0.00042: never a rate rounded to 0.0
    if (v === null || v === undefined) return "";
    if (v === 0) return "0";
    const a = Math.abs(v);
    if (a >= 100) return Math.round(v).toLocaleString();
    if (a >= 1) return v.toFixed(1);
    return Number(v.toPrecision(2)).toString();
  },
  duration(seconds) {
    // 52s, 1m 02s, 2h 05m (as the job's progress line says it)
    if (seconds === null || seconds === undefined) return "";
    const s = Math.max(0, Math.round(seconds));
    if (s < 60) return `${s}s`;
    const m = Math.floor(s / 60), r = s % 60;
    if (m < 60) return `${m}m ${String(r).padStart(2, "0")}s`;
    return `${Math.floor(m / 60)}h ${String(m % 60).padStart(2, "0")}m`;
  },
  // One line for a job's progress figures: "40 / 60 rows (66%) · 1.6 rows/s · about 13s left".
  progressText(p) {
    if (!p) return "";
    if (p.reading) return `reading the input (${RDL.duration(p.elapsed_seconds)})`;
    const pct = p.total ? Math.floor((100 * p.done) / p.total) : 100;
    const parts = [`${RDL.num(p.done)} / ${RDL.num(p.total)} rows (${pct}%)`];
    if (p.failed) parts.push(`${RDL.num(p.failed)} failed`);
    if (p.rows_per_second) parts.push(`${RDL.rate(p.rows_per_second)} rows/s`);
    if (p.finished) parts.push("done");
    else if (p.eta_seconds !== null && p.eta_seconds !== undefined) parts.push(`about ${RDL.duration(p.eta_seconds)} left`);
    else parts.push(p.done ? "rate not known yet" : "starting");
    return parts.join(" · ");
  },
  // The run's phases (seconds, in order) as one stacked bar with the phase names and
  // seconds in its title, and "N s outside inference" beside it.
  // One colour per phase name (job/phases.py), so a phase looks the same in every row, whichever
  // phases a run has (an HTTP endpoint reports no "engine start"); unknown names get the grey.
  PHASE_COLORS: { "submission": "#9aa5b1", "driver start": "#7b8794", "lock": "#c3a3d6", "pre-flight": "#a3c4f3",
                  "input count": "#8bd3c7", "processor build": "#f6c177", "first block in": "#f4a261",
                  "engine start": "#e76f51", "inference": "#2a9d8f", "end of pass": "#b5c99a", "commit": "#90be6d",
                  "teardown": "#adb5bd" },
  phasesBar(phases, width) {
    const entries = Object.entries(phases || {}).filter(([, v]) => typeof v === "number" && v >= 0);
    const total = entries.reduce((a, [, v]) => a + v, 0);
    if (!entries.length || total <= 0) return "";
    const outside = entries.filter(([k]) => k !== "inference").reduce((a, [, v]) => a + v, 0);
    const title = entries.map(([k, v]) => `${k}: ${v.toFixed(1)} s`).join("\n") + `\ntotal: ${total.toFixed(1)} s`;
    const bar = RDL.el("span", { class: "phases", title, role: "img", style: `width:${width || 160}px`,
      "aria-label": entries.map(([k, v]) => `${k} ${v.toFixed(1)} s`).join(", ") });
    entries.forEach(([k, v]) => {
      if (v <= 0) return;
      bar.append(RDL.el("span", { class: "phase", "data-phase": k,
        style: `width:${(100 * v) / total}%;background:${RDL.PHASE_COLORS[k] || "#ced4da"}` }));
    });
    const wrap = RDL.el("span", { class: "phases-cell" }, bar,
      RDL.el("span", { class: "small muted" }, ` ${outside.toFixed(1)} s outside inference`));
    return wrap;
  },
  when(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
  },
  // The Airflow UI's root: this page lives at <base>/raydatallm/..., links go to <base>/...
  uiBase() {
    const p = window.location.pathname;
    return p.slice(0, p.indexOf("/raydatallm/") + 1);
  },
  el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === null || v === undefined) continue;
      if (k === "class") e.className = v; else e.setAttribute(k, v);
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  },
  async getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!r.ok) {
      const body = await r.text();
      let detail = body;
      try { detail = JSON.parse(body).detail || body; } catch (e) { /* not JSON */ }
      throw new Error(`${r.status}: ${detail}`);
    }
    return r.json();
  },
};
