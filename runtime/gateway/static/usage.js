// The usage page: fetches GET /v1/usage (the report dict of
// runtime/accounting/reports.py) and draws it. Vanilla JS and inline SVG, no
// libraries, so the page works offline and behind any firewall.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const SVG_NS = "http://www.w3.org/2000/svg";
  const FILTERS = ["since", "service_type", "resource", "model"];
  const KEY_STORE = "llmfn-usage-key";
  const seen = { model: new Set(), resource: new Set() };

  // -- the key and the filters -------------------------------------------

  // ?key= is taken once, kept for the tab, and dropped from the address bar
  // so that it does not linger in history or screenshots.
  function takeKey() {
    const url = new URL(location.href);
    let key = url.searchParams.get("key");
    if (key !== null) {
      url.searchParams.delete("key");
      history.replaceState(null, "", url);
      remember(key);
    } else {
      try { key = sessionStorage.getItem(KEY_STORE); } catch (_) { key = null; }
    }
    return key || "";
  }

  function remember(key) {
    try { sessionStorage.setItem(KEY_STORE, key); } catch (_) { /* storage off: keep it in the box */ }
  }

  function filtersFromUrl() {
    const params = new URLSearchParams(location.search);
    for (const name of FILTERS) {
      const value = params.get(name);
      if (value === null) continue;
      const field = $("f-" + name);
      // a period the select does not list (?since=60d) becomes an option
      if (field.tagName === "SELECT" && ![...field.options].some((o) => o.value === value)) {
        field.add(new Option(value, value));
      }
      field.value = value;
    }
    if (!$("f-since").value) $("f-since").value = "7d";
  }

  function currentFilters() {
    const params = new URLSearchParams();
    for (const name of FILTERS) {
      const value = $("f-" + name).value.trim();
      if (value) params.set(name, value);
    }
    return params;
  }

  // -- fetching ------------------------------------------------------------

  async function load() {
    const filters = currentFilters();
    history.replaceState(null, "", location.pathname + "?" + filters);
    const query = new URLSearchParams(filters);
    query.set("by", "day");
    const key = $("f-key").value.trim();
    const headers = key ? { Authorization: "Bearer " + key } : {};
    setStatus("Loading…");
    document.body.dataset.state = "loading";
    let response, body;
    try {
      response = await fetch("/v1/usage?" + query, { headers, cache: "no-store" });
      body = await response.json().catch(() => null);
    } catch (err) {
      return fail("The gateway cannot be reached (" + err.message + ").");
    }
    if (!response.ok) {
      const message = (body && body.error && body.error.message) || "HTTP " + response.status;
      if (response.status === 401) $("f-key").focus();
      return fail(message);
    }
    render(body);
    setStatus("");
    document.body.dataset.state = "ready";
  }

  function fail(message) {
    setStatus(message, true);
    document.body.dataset.state = "error";
  }

  function setStatus(text, isError = false) {
    $("status").textContent = text;
    $("status").classList.toggle("error", isError);
  }

  // -- rendering -------------------------------------------------------------

  function render(report) {
    $("period").textContent = `${report.period.from} to ${report.period.to} (UTC)`;
    renderTotals(report.totals);
    barChart($("chart-calls"), report.rows, [
      { key: "success", label: "success", cls: "success" },
      { key: "failure", label: "failure", cls: "failure" },
    ], true);
    barChart($("chart-tokens"), report.rows, [
      { key: "input_tokens", label: "input", cls: "input" },
      { key: "output_tokens", label: "output", cls: "output" },
    ], false);
    fillTable($("table-models"), report.per_model, (r) => [cell(r.model, "name")]);
    fillTable($("table-resources"), report.per_resource,
      (r) => [cell(r.service_type, "name"), cell(r.resource, "name")]);
    offerNames(report);
  }

  function renderTotals(totals) {
    const shown = {
      "total-calls": totals.calls, "total-success": totals.success, "total-failure": totals.failure,
      "total-input-tokens": totals.input_tokens, "total-output-tokens": totals.output_tokens,
      "total-cached-tokens": totals.cached_tokens, "total-avg-tokens": totals.avg_tokens_per_request,
      "total-p50-latency": totals.p50_latency_ms, "total-p50-ttft": totals.p50_ttft_ms,
    };
    for (const [id, value] of Object.entries(shown)) {
      $(id).textContent = format(value);
      $(id).dataset.value = value === null ? "" : String(value);  // raw, for scripts and tests
    }
  }

  // Thousands separators fixed to "," rather than the browser's locale, so the
  // page reads the same everywhere.
  function format(value) {
    if (value === null || value === undefined) return "–";
    const text = Number.isInteger(value) ? String(value) : value.toFixed(1);
    const [whole, fraction] = text.split(".");
    const grouped = whole.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
    return fraction === undefined ? grouped : grouped + "." + fraction;
  }

  const STAT_COLUMNS = ["calls", "success", "failure", "input_tokens", "output_tokens",
    "cached_tokens", "avg_tokens_per_request", "p50_latency_ms", "p50_ttft_ms"];

  function fillTable(table, rows, nameCells) {
    const tbody = table.tBodies[0];
    tbody.replaceChildren();
    if (!rows.length) {
      const tr = tbody.insertRow();
      const td = cell("No calls in this period.", "empty");
      td.colSpan = table.tHead.rows[0].cells.length;
      tr.append(td);
      return;
    }
    for (const row of rows) {
      const tr = tbody.insertRow();
      tr.dataset.key = row.resource !== undefined ? `${row.service_type}:${row.resource}` : row.model;
      tr.append(...nameCells(row), ...STAT_COLUMNS.map((k) => cell(format(row[k]), "num", row[k])));
    }
  }

  function cell(text, cls, raw) {
    const td = document.createElement("td");
    td.textContent = text;
    td.className = cls;
    if (raw !== undefined) td.dataset.value = raw === null ? "" : String(raw);
    return td;
  }

  // Names seen in any report stay offered, so filtering on one model does not
  // hide the others from the list.
  function offerNames(report) {
    report.per_model.forEach((r) => seen.model.add(r.model));
    report.per_resource.forEach((r) => seen.resource.add(r.resource));
    for (const [kind, listId] of [["model", "model-names"], ["resource", "resource-names"]]) {
      $(listId).replaceChildren(...[...seen[kind]].sort().map((name) => {
        const option = document.createElement("option");
        option.value = name;
        return option;
      }));
    }
  }

  // -- charts ----------------------------------------------------------------

  const BOX = { width: 720, height: 240, left: 56, right: 10, top: 12, bottom: 34 };

  // One bar group per day: the series stacked (calls) or side by side (tokens).
  // Each group carries its numbers as data-* attributes.
  function barChart(svg, rows, series, stacked) {
    svg.replaceChildren();
    const plotW = BOX.width - BOX.left - BOX.right;
    const plotH = BOX.height - BOX.top - BOX.bottom;
    const heights = rows.map((r) => stacked
      ? series.reduce((sum, s) => sum + r[s.key], 0)
      : Math.max(...series.map((s) => r[s.key])));
    const top = niceCeiling(Math.max(1, ...heights));
    const baseline = BOX.top + plotH;
    const y = (v) => (plotH * v) / top;
    axis(svg, top, plotH, baseline);
    const slot = plotW / Math.max(rows.length, 1);
    const labelEvery = Math.ceil(rows.length / 12);
    rows.forEach((row, i) => {
      const g = el("g", { class: "bar", "data-day": row.day });
      series.forEach((s) => { g.dataset[s.label] = String(row[s.key]); });
      const x0 = BOX.left + i * slot + slot * 0.15;
      const width = slot * 0.7;
      let stackTop = baseline;
      series.forEach((s, j) => {
        const h = y(row[s.key]);
        const x = stacked ? x0 : x0 + (j * width) / series.length;
        const w = stacked ? width : width / series.length;
        const yTop = stacked ? stackTop - h : baseline - h;
        stackTop -= stacked ? h : 0;
        const rect = el("rect", { class: s.cls, x, y: yTop, width: w, height: h });
        rect.append(el("title", {}, `${row.day} ${s.label}: ${format(row[s.key])}`));
        g.append(rect);
      });
      if (i % labelEvery === 0) {
        g.append(el("text", { x: x0 + width / 2, y: baseline + 16, "text-anchor": "middle" },
          row.day.slice(5)));
      }
      svg.append(g);
    });
  }

  function axis(svg, top, plotH, baseline) {
    // whole-number steps: calls and tokens are counts
    const ticks = top >= 5 ? (top % 4 === 0 ? 4 : 5) : top;
    for (let i = 0; i <= ticks; i++) {
      const value = (top * i) / ticks;
      const yPos = baseline - (plotH * i) / ticks;
      svg.append(el("line", { class: "grid", x1: BOX.left, x2: BOX.width - BOX.right, y1: yPos, y2: yPos }));
      svg.append(el("text", { x: BOX.left - 6, y: yPos + 4, "text-anchor": "end" }, short(value)));
    }
  }

  // The smallest 1, 2 or 5 times a power of ten at or above v.
  function niceCeiling(v) {
    const power = 10 ** Math.floor(Math.log10(v));
    return [1, 2, 5, 10].map((m) => m * power).find((c) => c >= v);
  }

  function short(v) {
    if (v >= 1e6) return +(v / 1e6).toFixed(1) + "M";
    if (v >= 1e3) return +(v / 1e3).toFixed(1) + "k";
    return String(+v.toFixed(1));
  }

  function el(name, attrs, text) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // -- start -------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("f-key").value = takeKey();
    filtersFromUrl();
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      remember($("f-key").value.trim());
      load();
    });
    for (const id of ["f-since", "f-service_type"]) $(id).addEventListener("change", load);
    load();
  });
})();
