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
