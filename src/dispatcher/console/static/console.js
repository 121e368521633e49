// dispatcher console: the live figures. Polls /console/api/live (rates the server computes
// from its own /metrics), draws them as inline SVG paths and fills the numbers in place.
// Elements keep fixed sizes in the stylesheet, so updates never shift the layout.

const POLL_MS = 2000;
const WIDTH = 300;
const HEIGHT = 100;
const DASH = "\u2014";

export function niceMax(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) {
    if (value <= step * power) return step * power;
  }
  return 10 * power;
}

export function formatValue(unit, value) {
  if (value === null || value === undefined || Number.isNaN(value)) return DASH;
  if (unit === "%") return `${(value * 100).toFixed(2)} %`;
  if (unit === "ms") {
    if (value < 0.001) return `${Math.round(value * 1e6)} \u00b5s`;
    return `${(value * 1000).toFixed(value < 0.1 ? 2 : 0)} ms`;
  }
  const digits = value >= 100 ? 0 : value >= 10 ? 1 : 2;
  return `${value.toFixed(digits)} /s`;
}

// An SVG path through the points; a missing value or a gap in the readings starts a new
// segment instead of drawing a line across it.
export function pathOf(points, key, max, window, interval) {
  let d = "";
  let previousAgo = null;
  for (const point of points) {
    const value = point[key];
    if (value === null || value === undefined) {
      previousAgo = null;
      continue;
    }
    const x = (WIDTH * (1 - point.ago / window)).toFixed(1);
    const y = (HEIGHT * (1 - Math.min(value / max, 1))).toFixed(1);
    const broken = previousAgo === null || previousAgo - point.ago > 3 * interval;
    d += `${broken ? "M" : "L"}${x},${y}`;
    previousAgo = point.ago;
  }
  return d;
}

// The time the charts span: the whole window once it is full; until then what there is,
// but never less than a minute, so a fresh start does not stretch two readings across.
export function spanOf(report) {
  const oldest = report.points.length ? report.points[0].ago + report.interval : 0;
  return Math.min(report.window, Math.max(60, oldest));
}

function spanLabel(span) {
  return span < 120 ? `${Math.round(span)} s ago` : `${Math.round(span / 60)} min ago`;
}

function drawChart(figure, report) {
  const unit = figure.dataset.unit;
  const lines = [...figure.querySelectorAll("[data-line]")];
  const keys = lines.map((line) => line.dataset.line);
  let max = unit === "%" ? 1 : 0;
  let seen = false;
  for (const point of report.points) {
    for (const key of keys) {
      const value = point[key];
      if (value === null || value === undefined) continue;
      seen = true;
      if (unit !== "%") max = Math.max(max, value);
    }
  }
  if (unit !== "%") max = niceMax(max);
  const span = spanOf(report);
  for (const line of lines) {
    line.setAttribute("d", pathOf(report.points, line.dataset.line, max, span, report.interval));
  }
  figure.querySelector("[data-axis-start]").textContent = spanLabel(span);
  figure.querySelector("[data-axis-max]").textContent = seen ? formatValue(unit, max) : DASH;
  for (const number of figure.querySelectorAll("[data-live]")) {
    number.textContent = formatValue(unit, report.current ? report.current[number.dataset.live] : null);
  }
}

function fillWorkers(report) {
  for (const cell of document.querySelectorAll("[data-worker-rate]")) {
    const figures = report.workers[cell.dataset.workerRate];
    cell.textContent = formatValue("req/s", figures ? figures.rate : 0);
  }
  for (const cell of document.querySelectorAll("[data-worker-errors]")) {
    const figures = report.workers[cell.dataset.workerErrors];
    cell.textContent = formatValue("%", figures ? figures.errors : null);
  }
}

function show(report) {
  for (const figure of document.querySelectorAll("[data-chart]")) drawChart(figure, report);
  const inFlight = document.querySelector('[data-live="in_flight"]');
  if (inFlight) {
    const value = report.current ? report.current.in_flight : null;
    inFlight.textContent = value === null || value === undefined ? DASH : String(value);
  }
  fillWorkers(report);
  const state = document.querySelector("[data-live-state]");
  if (state) {
    state.textContent = report.available
      ? `Live: from this dispatcher's /metrics, every ${report.interval} s`
      : `Live metrics unavailable: ${report.problem}`;
  }
}

async function poll() {
  if (document.hidden) return;
  let response;
  try {
    response = await fetch("/console/api/live", { credentials: "same-origin", cache: "no-store" });
  } catch {
    return; // the listener is restarting: the next poll tries again
  }
  if (response.status === 401) {
    window.location.reload(); // the session ended: the page redirects to the login form
    return;
  }
  if (response.ok) show(await response.json());
}

function start() {
  const wanted = document.querySelector("[data-chart], [data-worker-rate], [data-live]");
  if (!wanted) return;
  poll();
  setInterval(poll, POLL_MS);
  document.addEventListener("visibilitychange", poll);
}

start();
