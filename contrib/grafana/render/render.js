// Draws ../mailhop.json the way Grafana would, from a real Prometheus.
// Every panel's targets[].expr is run against /api/v1/query_range (proxied by
// serve.py) and drawn with uPlot at its gridPos. Query parameters:
//   range=5m   time range ending now (default: the dashboard's, 30m)
//   end=UNIX   end of the range instead of now
//   rate=20s   what $__rate_interval becomes (default 1m)
//   next_hop=  regex for $next_hop (default .*, i.e. All)
//   note=TEXT  a line shown in the header (capture.sh --fake says "synthetic data")
"use strict";

const params = new URLSearchParams(location.search);
const COLORS = { green: "#73BF69", yellow: "#FADE2A", red: "#F2495C", blue: "#5794F2",
                 orange: "#FF9830", purple: "#B877D9", text: "#ccccdc" };
const PALETTE = ["#73BF69", "#F2CC0C", "#8AB8FF", "#FF780A", "#F2495C", "#5794F2",
                 "#B877D9", "#705DA0", "#37872D", "#FADE2A", "#E0B400", "#C4162A"];
const GRID = { cell: 30, gap: 8 };  // Grafana's row height and margins, in px
const CALC_NAMES = { mean: "Mean", max: "Max", min: "Min", lastNotNull: "Last *", last: "Last" };

const seconds = (d) => { const m = /^(\d+)(s|m|h|d)$/.exec(d); return m ? m[1] * { s: 1, m: 60, h: 3600, d: 86400 }[m[2]] : NaN; };
const color = (c) => COLORS[c] || c;
window.renderErrors = [];
window.renderEmpty = [];

// ---- units, after Grafana's: short, none, s, dtdurations, Bps, "suffix:X" ----
function num(v, decimals) {
  if (decimals == null) decimals = Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : Math.abs(v) >= 1 ? 2 : 3;
  return String(Number(v.toFixed(decimals)));
}
function scaled(v, steps, decimals) {  // steps: [[factor, suffix], ...] ascending
  let [f, s] = steps[0];
  for (const st of steps) if (Math.abs(v) >= st[0]) [f, s] = st;
  return num(v / f, decimals) + s;
}
function format(unit, v, decimals) {
  if (v == null || Number.isNaN(v)) return "—";
  if (unit && unit.startsWith("suffix:")) return num(v, decimals) + unit.slice(7);
  switch (unit) {
    case "none": return num(v, decimals);
    case "s": return v === 0 ? "0 s" : scaled(v, [[1e-6, " µs"], [1e-3, " ms"], [1, " s"], [60, " min"], [3600, " hour"]], decimals);
    case "Bps": return scaled(v, [[1, " B/s"], [1e3, " kB/s"], [1e6, " MB/s"], [1e9, " GB/s"]], decimals);
    case "dtdurations": return duration(v);
    default: return scaled(v, [[1, ""], [1e3, " K"], [1e6, " Mil"], [1e9, " Bil"]], decimals);
  }
}
function duration(v) {
  const parts = [];
  for (const [n, name] of [[86400, "day"], [3600, "hour"], [60, "minute"], [1, "second"]]) {
    const k = Math.floor(v / n);
    if (k > 0 || (n === 1 && !parts.length)) parts.push(`${k} ${name}${k === 1 ? "" : "s"}`);
    v -= k * n;
    if (parts.length === 2) break;
  }
  return parts.join(", ");
}

// ---- querying ----
const range = seconds(params.get("range") || "") || null;
const rate = params.get("rate") || "1m";
const hop = params.get("next_hop") || ".*";

function interpolate(expr, rangeSeconds) {
  return expr.replaceAll("$__rate_interval", rate).replaceAll("$__range", `${rangeSeconds}s`)
    .replace(/\$\{?next_hop\}?/g, hop);
}

async function query(expr, t) {
  const q = t.instant ? `/api/v1/query?query=${encodeURIComponent(expr)}&time=${t.end}`
    : `/api/v1/query_range?query=${encodeURIComponent(expr)}&start=${t.start}&end=${t.end}&step=${t.step}`;
  const r = await fetch(q);
  const body = await r.json().catch(() => ({ error: `HTTP ${r.status}` }));
  if (body.status !== "success") throw new Error(`${body.error || r.status}\n${expr}`);
  return body.data.result;
}

function legendName(fmt, metric) {
  if (fmt) return fmt.replace(/\{\{\s*(\w+)\s*\}\}/g, (_, l) => metric[l] ?? "");
  const labels = Object.entries(metric).filter(([k]) => k !== "__name__").map(([k, v]) => `${k}="${v}"`);
  return `${metric.__name__ || ""}{${labels.join(", ")}}`;
}

// All series of a panel, values aligned on one time axis xs.
async function panelSeries(panel, t) {
  const xs = [];
  for (let x = t.start; x <= t.end; x += t.step) xs.push(x);
  const out = [];
  for (const target of panel.targets || []) {
    if (target.hide) continue;
    const tt = { ...t, instant: !!target.instant };
    for (const r of await query(interpolate(target.expr, t.end - t.start), tt)) {
      const ys = new Array(xs.length).fill(null);
      for (const [x, v] of r.values || [r.value]) {
        const i = Math.round((x - t.start) / t.step);
        const y = parseFloat(v);
        if (i >= 0 && i < xs.length && Number.isFinite(y)) ys[i] = y;
      }
      out.push({ name: legendName(target.legendFormat, r.metric), ys });
    }
  }
  return { xs, series: out };
}

// ---- field config: defaults plus overrides (byName, byRegexp) ----
function fieldConfig(panel, name, index) {
  const fc = panel.fieldConfig || {};
  const d = fc.defaults || {};
  const f = { unit: d.unit, decimals: d.decimals, custom: { ...(d.custom || {}) },
              color: PALETTE[index % PALETTE.length] };
  for (const o of fc.overrides || []) {
    const m = o.matcher || {};
    const hit = m.id === "byName" ? m.options === name
      : m.id === "byRegexp" ? new RegExp(`^(?:${m.options})$`).test(name) : false;
    if (!hit) continue;
    for (const p of o.properties) {
      if (p.id === "color") f.color = color(p.value.fixedColor);
      else if (p.id === "unit") f.unit = p.value;
      else if (p.id === "decimals") f.decimals = p.value;
      else if (p.id.startsWith("custom.")) f.custom[p.id.slice(7)] = p.value;
    }
  }
  return f;
}

function calc(name, ys) {
  const v = ys.filter((y) => y != null);
  if (!v.length) return null;
  switch (name) {
    case "mean": return v.reduce((a, b) => a + b, 0) / v.length;
    case "max": return Math.max(...v);
    case "min": return Math.min(...v);
    case "last": return ys[ys.length - 1];
    default: return v[v.length - 1];  // lastNotNull
  }
}

// ---- drawing ----
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text != null) e.textContent = text;
  return e;
}

function legend(panel, series, fields) {
  const opts = (panel.options || {}).legend || {};
  if (opts.showLegend === false) return null;
  const calcs = opts.calcs || [];
  if (opts.displayMode !== "table" || !calcs.length) {
    const box = el("div", "legend");
    series.forEach((s, i) => {
      const item = el("span");
      const sw = el("i"); sw.style.background = fields[i].color;
      item.append(sw, s.name);
      box.append(item);
    });
    return box;
  }
  const table = el("table", "legend");
  const head = table.insertRow();
  head.append(el("th"), ...calcs.map((c) => el("th", null, CALC_NAMES[c] || c)));
  series.forEach((s, i) => {
    const row = table.insertRow();
    const name = row.insertCell();
    const sw = el("i"); sw.style.background = fields[i].color;
    name.append(sw, s.name);
    for (const c of calcs) row.insertCell().textContent = format(fields[i].unit, calc(c, s.ys), fields[i].decimals);
  });
  return table;
}

function empty(panel, body) {
  window.renderEmpty.push(panel.title);
  body.append(el("div", "nodata", "No data"));
}

function timeseries(panel, body, data) {
  if (!data.series.length) { empty(panel, body); return; }
  const fields = data.series.map((s, i) => fieldConfig(panel, s.name, i));
  const leg = legend(panel, data.series, fields);
  if (((panel.options || {}).legend || {}).placement === "right") body.classList.add("right");
  const chart = el("div", "chart");
  body.append(chart);
  if (leg) body.append(leg);

  // Stacking (mode "normal"): each series is drawn on top of the ones before it on its axis.
  const sums = {};
  const plotted = data.series.map((s, i) => {
    const f = fields[i];
    const axis = f.custom.axisPlacement === "right" ? "y2" : "y";
    if ((f.custom.stacking || {}).mode !== "normal") return { ys: s.ys, axis };
    const base = sums[axis] || new Array(s.ys.length).fill(0);
    const ys = s.ys.map((y, k) => (y == null ? base[k] : base[k] + y));
    const below = sums[`${axis}#`];
    sums[axis] = ys; sums[`${axis}#`] = i + 1;
    return { ys, axis, below };
  });
  const unitOf = (axis) => (fields.find((f, i) => plotted[i].axis === axis) || fields[0]).unit;
  const axisStyle = { stroke: "#ccccdc", font: "11px Inter, Arial, sans-serif", size: 50,
                      grid: { stroke: "rgba(204,204,220,0.07)", width: 1 }, ticks: { show: false } };
  const softMin = (u, min, max) => [Math.min(0, min), max > 0 ? max * 1.1 : 1];
  const pad = (n) => String(n).padStart(2, "0");
  const clock = (u, ticks, axis, space, incr) => ticks.map((x) => {
    const d = new Date(x * 1000);
    return `${pad(d.getHours())}:${pad(d.getMinutes())}${incr < 60 ? `:${pad(d.getSeconds())}` : ""}`;
  });
  const axes = [{ ...axisStyle, size: 24, values: clock, space: 60 },
                { ...axisStyle, scale: "y", values: (u, v) => v.map((x) => format(unitOf("y"), x)) }];
  const scales = { x: { time: true }, y: { range: softMin } };
  if (plotted.some((p) => p.axis === "y2")) {
    scales.y2 = { range: softMin };
    axes.push({ ...axisStyle, scale: "y2", side: 1, grid: { show: false },
                values: (u, v) => v.map((x) => format(unitOf("y2"), x)) });
  }
  const series = [{}].concat(data.series.map((s, i) => {
    const c = fields[i].custom;
    const fill = (c.fillOpacity || 0) / 100;
    return { label: s.name, scale: plotted[i].axis, stroke: fields[i].color, width: c.lineWidth || 1,
             fill: fill ? fields[i].color + Math.round(fill * 255).toString(16).padStart(2, "0") : undefined,
             points: { show: false }, spanGaps: !!c.spanNulls };
  }));
  const bands = plotted.map((p, i) => (p.below ? { series: [i + 1, p.below] } : null)).filter(Boolean);
  const size = () => ({ width: chart.clientWidth, height: Math.max(60, chart.clientHeight) });
  new uPlot({ ...size(), series, axes, scales, bands, legend: { show: false }, cursor: { show: false } },
            [data.xs, ...plotted.map((p) => p.ys)], chart);
}

function stat(panel, body, data) {
  const d = (panel.fieldConfig || {}).defaults || {};
  const steps = ((d.thresholds || {}).steps) || [{ color: "green", value: null }];
  const opts = panel.options || {};
  if (!data.series.length) { empty(panel, body); return; }
  const fit = [];
  for (const s of data.series) {
    const v = calc(((opts.reduceOptions || {}).calcs || ["lastNotNull"])[0], s.ys);
    let c = steps[0].color;
    for (const st of steps) if (st.value != null && v != null && v >= st.value) c = st.color;
    const box = el("div", "stat");
    const value = el("div", "value", opts.textMode === "name" ? s.name : format(d.unit, v, d.decimals));
    value.style.color = color(c);
    box.append(value);
    fit.push([box, value]);
    if (opts.textMode === "value_and_name") box.append(el("div", "name", s.name));
    const pts = s.ys.map((y, i) => [i, y]).filter(([, y]) => y != null);
    if (opts.graphMode === "area" && pts.length > 1 && opts.textMode !== "name") {
      const max = Math.max(...pts.map(([, y]) => y)) || 1;
      const n = s.ys.length - 1;
      const path = pts.map(([i, y], k) => `${k ? "L" : "M"}${(i / n) * 100},${100 - (y / max) * 100}`).join("");
      box.insertAdjacentHTML("beforeend", `<svg viewBox="0 0 100 100" preserveAspectRatio="none">
        <path d="${path}L${(pts[pts.length - 1][0] / n) * 100},100L${(pts[0][0] / n) * 100},100Z"
              fill="${color(c)}" fill-opacity="0.15" stroke="${color(c)}" stroke-width="1" vector-effect="non-scaling-stroke"/></svg>`);
    }
    body.append(box);
  }
  // Like Grafana, the value is as large as the panel lets it be, on one line.
  for (const [box, value] of fit) {
    const chars = value.textContent.length || 1;
    value.style.fontSize = `${Math.min(box.clientHeight * 0.55, (box.clientWidth * 0.9) / (chars * 0.55), 48)}px`;
  }
}

function place(node, g, colW) {
  node.style.left = `${g.x * colW}px`;
  node.style.top = `${g.y * (GRID.cell + GRID.gap)}px`;
  node.style.width = `${g.w * colW - GRID.gap}px`;
  node.style.height = `${g.h * (GRID.cell + GRID.gap) - GRID.gap}px`;
}

async function main() {
  const dash = await (await fetch("mailhop.json")).json();
  const span = range || seconds(dash.time.from.replace("now-", "")) || 1800;
  const end = Math.floor(Number(params.get("end")) || Date.now() / 1000);
  const step = Math.max(2, Math.ceil(span / 400));
  const t = { start: end - span, end, step };
  document.title = dash.title;
  document.getElementById("title").textContent = dash.title;
  document.getElementById("range").textContent = `Last ${duration(span)}`;
  document.getElementById("refresh").textContent = `⟳ ${dash.refresh}`;
  if (params.get("note")) document.getElementById("note").textContent = params.get("note");
  const vars = document.getElementById("vars");
  for (const v of (dash.templating || {}).list || []) {
    const box = el("div", "var");
    box.append(el("label", null, v.label || v.name), el("span", null, hop === ".*" ? "All" : hop));
    vars.append(box);
  }
  const iso = (s) => new Date(s * 1000).toISOString().replace(".000Z", "Z");
  document.getElementById("footer").textContent =
    `${iso(t.start)} – ${iso(t.end)}, step ${step}s, $__rate_interval = ${rate}; drawn by contrib/grafana/render from Prometheus`;

  const grid = document.getElementById("grid");
  const colW = (grid.clientWidth + GRID.gap) / 24;
  const bottom = Math.max(...dash.panels.map((p) => p.gridPos.y + p.gridPos.h));
  grid.style.height = `${bottom * (GRID.cell + GRID.gap)}px`;
  await Promise.all(dash.panels.map(async (panel) => {
    if (panel.type === "row") {
      const row = el("div", "row", panel.title);
      place(row, panel.gridPos, colW);
      grid.append(row);
      return;
    }
    const node = el("div", "panel");
    place(node, panel.gridPos, colW);
    const body = el("div", "body");
    node.append(el("h2", null, panel.title), body);
    grid.append(node);
    try {
      const data = await panelSeries(panel, t);
      if (panel.type === "stat") stat(panel, body, data);
      else timeseries(panel, body, data);
    } catch (e) {
      window.renderErrors.push(`${panel.title}: ${e.message}`);
      body.append(el("div", "error", e.message));
    }
  }));
}

main().catch((e) => window.renderErrors.push(String(e))).finally(() => { window.renderDone = true; });
