// Every panel is a set of Prometheus range queries (panels.json), drawn as SVG lines.
// Each panel says what it shows in data-state: "data" (at least one series with a value),
// "empty" (the queries returned nothing) or "error"; the headless test reads these.
"use strict";
const COLORS = ["#4e9af1", "#f1a34e", "#57c26a", "#e5534b", "#b07df0", "#49c5c5", "#d6c94a", "#e07bb5"];
const RANGE_S = Number(new URLSearchParams(location.search).get("range") || 900);
const REFRESH_MS = 5000;

function legendOf(template, metric) {
  return template.replace(/\{\{(\w+)\}\}/g, (_, k) => metric[k] ?? "");
}

function fmt(v) {
  const a = Math.abs(v);
  if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
  if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
  if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
  if (a >= 10 || v === 0) return v.toFixed(0);
  return v.toPrecision(2);
}

async function queryRange(expr, start, end, step) {
  const q = new URLSearchParams({ query: expr, start, end, step });
  const r = await fetch("/api/v1/query_range?" + q);
  const body = await r.json();
  if (body.status !== "success") throw new Error(body.error || r.statusText);
  return body.data.result;
}

function draw(svg, series, unit) {
  const W = 600, H = 150, L = 46, B = 16;
  svg.setAttribute("viewBox", `0 0 ${W} ${H}`);
  svg.innerHTML = "";
  const pts = series.flatMap(s => s.points);
  if (!pts.length) return;
  const t0 = Math.min(...pts.map(p => p[0])), t1 = Math.max(...pts.map(p => p[0]));
  let y0 = Math.min(0, ...pts.map(p => p[1])), y1 = Math.max(...pts.map(p => p[1]));
  if (y1 === y0) y1 = y0 + 1;
  const x = t => L + (W - L - 4) * (t1 === t0 ? 1 : (t - t0) / (t1 - t0));
  const y = v => 4 + (H - B - 8) * (1 - (v - y0) / (y1 - y0));
  const ns = "http://www.w3.org/2000/svg";
  for (const v of [y0, (y0 + y1) / 2, y1]) {
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: L, x2: W - 4, y1: y(v), y2: y(v), stroke: "#2a313b" }).forEach(([k, val]) => line.setAttribute(k, val));
    svg.appendChild(line);
    const label = document.createElementNS(ns, "text");
    Object.entries({ x: L - 4, y: y(v) + 4, fill: "#8b96a3", "font-size": 10, "text-anchor": "end" }).forEach(([k, val]) => label.setAttribute(k, val));
    label.textContent = fmt(v) + (unit && unit.length <= 2 ? unit : "");
    svg.appendChild(label);
  }
  series.forEach((s, i) => {
    const path = document.createElementNS(ns, "polyline");
    path.setAttribute("points", s.points.map(p => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
    path.setAttribute("fill", "none");
    path.setAttribute("stroke", COLORS[i % COLORS.length]);
    path.setAttribute("stroke-width", "1.5");
    svg.appendChild(path);
  });
}

async function renderPanel(el, panel, start, end, step) {
  const series = [];
  try {
    for (const t of panel.targets) {
      for (const r of await queryRange(t.expr, start, end, step)) {
        const points = r.values.map(([ts, v]) => [Number(ts), Number(v)]).filter(p => Number.isFinite(p[1]));
        if (points.length) series.push({ name: legendOf(t.legend || t.expr, r.metric), points });
      }
    }
  } catch (e) {
    el.dataset.state = "error";
    el.querySelector(".state").textContent = "error: " + e.message;
    return;
  }
  el.dataset.state = series.length ? "data" : "empty";
  el.dataset.series = String(series.length);
  el.querySelector(".state").textContent = series.length ? `${series.length} series` : "no data";
  draw(el.querySelector("svg"), series, panel.unit);
  el.querySelector(".legend").innerHTML = series.map((s, i) =>
    `<span><i style="background:${COLORS[i % COLORS.length]}"></i>${s.name}: ${fmt(s.points[s.points.length - 1][1])}</span>`).join("");
}

async function main() {
  const config = await (await fetch("/panels.json")).json();
  document.getElementById("title").textContent = config.title;
  const grid = document.getElementById("grid");
  const els = config.panels.map(panel => {
    const el = document.createElement("div");
    el.className = "panel";
    el.dataset.title = panel.title;
    el.dataset.state = "loading";
    el.innerHTML = `<h2><span class="state">loading</span>${panel.title}</h2><svg></svg><div class="legend"></div>`;
    grid.appendChild(el);
    return el;
  });
  let rounds = 0;
  async function refresh() {
    const end = Date.now() / 1000, start = end - RANGE_S, step = Math.max(1, Math.round(RANGE_S / 300));
    await Promise.all(config.panels.map((p, i) => renderPanel(els[i], p, start, end, step)));
    rounds += 1;
    document.body.dataset.rendered = String(rounds);
    document.getElementById("meta").textContent =
      `last ${Math.round(RANGE_S / 6) / 10} min, step ${step}s, refreshed ${new Date().toISOString()}`;
  }
  await refresh();
  setInterval(refresh, REFRESH_MS);
}

main();
