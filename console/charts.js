// The console's charts, on Chart.js (console/vendor/chart.umd.min.js, a global
// `Chart`). Every chart also has its numbers in a table beside it.

const COLORS = {
  line: "#1d4ed8",
  fill: "rgba(29, 78, 216, 0.12)",
  bar: "#0f766e",
  used: "#64748b",
  remaining: "#15803d",
  expired: "#d97706",
  grid: "#e5e7eb",
  text: "#374151",
};

const charts = new Map();

function lib() {
  return window.Chart || null;
}

function setDefaults() {
  const Chart = lib();
  if (!Chart || setDefaults.done) return;
  setDefaults.done = true;
  Chart.defaults.font.family = getComputedStyle(document.body).fontFamily;
  Chart.defaults.color = COLORS.text;
  Chart.defaults.borderColor = COLORS.grid;
  Chart.defaults.maintainAspectRatio = false;
  Chart.defaults.animation = false;
}

/** Draws (or redraws) the chart on `canvas` with `config`. */
function draw(canvas, config) {
  const Chart = lib();
  if (!Chart) {
    canvas.replaceWith(Object.assign(document.createElement("p"), {
      className: "help",
      textContent: "The chart library did not load; the table shows the same numbers.",
    }));
    return;
  }
  setDefaults();
  const old = charts.get(canvas.id);
  if (old) old.destroy();
  charts.set(canvas.id, new Chart(canvas, config));
}

const fmt = new Intl.NumberFormat();

/** Tokens used by day: `points` is [{day, tokens}] for every day of the range. */
export function drawDays(canvas, points) {
  draw(canvas, {
    type: "line",
    data: {
      labels: points.map((p) => p.day),
      datasets: [{
        label: "Tokens used",
        data: points.map((p) => p.tokens),
        borderColor: COLORS.line,
        backgroundColor: COLORS.fill,
        fill: true,
        pointRadius: points.length > 62 ? 0 : 2,
        borderWidth: 2,
        tension: 0,
      }],
    },
    options: {
      interaction: { mode: "index", intersect: false },
      plugins: { legend: { display: false } },
      scales: {
        x: { ticks: { maxTicksLimit: 8, maxRotation: 0, autoSkip: true } },
        y: { beginAtZero: true, ticks: { precision: 0, callback: (v) => fmt.format(v) } },
      },
    },
  });
  canvas.setAttribute("aria-label", `Tokens used by day, ${points[0]?.day ?? ""} to ${points.at(-1)?.day ?? ""}: ${fmt.format(points.reduce((s, p) => s + p.tokens, 0))} in all`);
}

/** Tokens by product: `rows` is [{label, tokens}]. */
export function drawProducts(canvas, rows) {
  draw(canvas, {
    type: "bar",
    data: {
      labels: rows.map((r) => r.label),
      datasets: [{ label: "Tokens used", data: rows.map((r) => r.tokens), backgroundColor: COLORS.bar, borderRadius: 3, maxBarThickness: 48 }],
    },
    options: {
      plugins: { legend: { display: false } },
      scales: { y: { beginAtZero: true, ticks: { precision: 0, callback: (v) => fmt.format(v) } } },
    },
  });
  canvas.setAttribute("aria-label", `Tokens used by product: ${rows.map((r) => `${r.label} ${fmt.format(r.tokens)}`).join(", ") || "none"}`);
}

/** Each lot's tokens, used / remaining / expired: `lots` as the API gives them. */
export function drawLots(canvas, lots) {
  const labels = lots.map((l) => `${l.purchasedAt.slice(0, 10)} (${fmt.format(l.quantity)})`);
  draw(canvas, {
    type: "bar",
    data: {
      labels,
      datasets: [
        { label: "Used", data: lots.map((l) => l.used), backgroundColor: COLORS.used },
        { label: "Remaining", data: lots.map((l) => l.remaining), backgroundColor: COLORS.remaining },
        { label: "Expired", data: lots.map((l) => l.expired), backgroundColor: COLORS.expired },
      ],
    },
    options: {
      indexAxis: "y",
      plugins: { legend: { position: "bottom" } },
      scales: {
        x: { stacked: true, beginAtZero: true, ticks: { precision: 0, callback: (v) => fmt.format(v) } },
        y: { stacked: true },
      },
    },
  });
  canvas.parentElement.style.height = `${Math.max(140, 60 + lots.length * 34)}px`;
  canvas.setAttribute("aria-label", `Tokens of each lot: ${lots.map((l) => `bought ${l.purchasedAt.slice(0, 10)}, ${fmt.format(l.remaining)} of ${fmt.format(l.quantity)} remaining`).join("; ") || "no lots"}`);
}
