// The report page (docs/report-page.md): a campaign's phase cards, daily trend, funnel and failures, and the shop's
// dashboard, read from the API's JSON routes with the shop's key. Plain ES module: no framework, no build step.
//
// Every number shown is an element with data-field (its path in the JSON its section's data-source names, e.g.
// "phases.0.revenue" in the report) and data-value (the JSON value itself), formatted by format() below:
// counts with thousands separators, money to 2 decimals (rounded half up from the exact decimal string), rates
// and ROI as percentages to 1 decimal, "–" for a value that does not exist (nobody reached, nothing spent).
// The key lives in this tab's sessionStorage only and travels as a Bearer header, never in a URL.

const KEY_STORE = "sluice.apiKey";
const PAGE_SIZE = 10; // failures per page
const CAMPAIGN_PAGE = 50;
const DASH = "\u2013";
const API_ROOT = new URL("../", document.baseURI); // the page is /ui/: the API is its parent
const SVG_NS = "http://www.w3.org/2000/svg";

export const COUNTS = new Set(["sent", "failed", "reached", "replied", "converted", "orders", "campaigns", "count"]);
export const MONEY = new Set(["revenue", "cost"]);
export const RATES = new Set(["inquiry_rate", "conversion_rate", "roi", "conversion"]); // conversion: the funnel's
const FIGURES = ["sent", "reached", "inquiry_rate", "conversion_rate", "revenue", "cost", "roi"];
const MINOR = ["failed", "replied", "converted", "orders"];
const LABELS = {
  sent: "sent", failed: "failed", reached: "reached", replied: "replied", converted: "converted", orders: "orders",
  revenue: "revenue", cost: "cost", inquiry_rate: "inquiry rate", conversion_rate: "conversion rate", roi: "ROI",
  campaigns: "campaigns",
};

// ------------------------------------------------------------------ formatting

function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

function formatCount(n, signed) {
  if (n === null || n === undefined) return DASH;
  const sign = n < 0 ? "-" : signed && n > 0 ? "+" : "";
  return sign + group(String(Math.abs(n)));
}

// A decimal string (the API's money) to 2 decimals, half up, without going through a float.
function formatMoney(v, signed) {
  if (v === null || v === undefined) return DASH;
  let s = String(v).trim();
  if (/e/i.test(s)) s = Number(s).toFixed(4);
  const negative = s.startsWith("-");
  if (negative || s.startsWith("+")) s = s.slice(1);
  const [whole, frac = ""] = s.split(".");
  let cents = BigInt((whole || "0") + frac.padEnd(2, "0").slice(0, 2));
  if ((frac[2] || "0") >= "5") cents += 1n;
  const units = (cents / 100n).toString();
  const rest = (cents % 100n).toString().padStart(2, "0");
  const sign = cents === 0n ? "" : negative ? "-" : signed ? "+" : "";
  return `${sign}${group(units)}.${rest}`;
}

function formatRate(x) {
  if (x === null || x === undefined) return DASH;
  const fixed = Math.abs(x * 100).toFixed(1);
  const [whole, frac] = fixed.split(".");
  const sign = x < 0 && fixed !== "0.0" ? "-" : "";
  return `${sign}${group(whole)}.${frac}%`;
}

// How a field's value is shown, by the field's name (the last part of its path that is not an index).
export function format(name, value, signed = false) {
  if (MONEY.has(name)) return formatMoney(value, signed);
  if (RATES.has(name)) return formatRate(value);
  if (COUNTS.has(name) || typeof value === "number") return formatCount(value, signed);
  return value === null || value === undefined ? DASH : String(value);
}

// ------------------------------------------------------------------ DOM helpers

const $ = (id) => document.getElementById(id);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("data-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

// A number element: its JSON path, its JSON value, its formatted text.
function num(field, value, { tag = "span", signed = false, cls = "num" } = {}) {
  const name = field.split(".").filter((p) => !/^\d+$/.test(p)).pop();
  return el(tag, { class: cls, "data-field": field, "data-value": JSON.stringify(value ?? null),
    text: format(name, value, signed) });
}

function table(node, head, rows) {
  node.replaceChildren(
    el("thead", {}, el("tr", {}, ...head.map((h) => el("th", { text: h })))),
    el("tbody", {}, ...rows),
  );
}

function setStatus(text, isError = false) {
  const s = $("status");
  s.textContent = text || "";
  s.classList.toggle("error", isError);
}

function show(id, visible) {
  $(id).hidden = !visible;
}

// ------------------------------------------------------------------ the API

class KeyRefused extends Error {}

function apiKey() {
  return sessionStorage.getItem(KEY_STORE);
}

async function api(path, { method = "GET", params = {} } = {}) {
  const url = new URL(path.replace(/^\//, ""), API_ROOT);
  for (const [k, v] of Object.entries(params)) {
    if (v === null || v === undefined || v === "") continue;
    for (const item of Array.isArray(v) ? v : [v]) url.searchParams.append(k, String(item));
  }
  const answer = await fetch(url, {
    method, cache: "no-store", credentials: "omit", referrerPolicy: "no-referrer",
    headers: { Authorization: `Bearer ${apiKey()}`, Accept: "application/json" },
  });
  if (answer.status === 401) {
    forgetKey("The API key was refused: enter a valid key of the shop.");
    throw new KeyRefused();
  }
  if (!answer.ok) {
    let detail = answer.statusText;
    try {
      const body = await answer.json();
      detail = Array.isArray(body.detail)
        ? body.detail.map((d) => `${d.field}: ${d.message} (${d.rule})`).join("; ")
        : String(body.detail);
    } catch { /* not JSON: the status text */ }
    throw new Error(`${method} ${url.pathname}: ${answer.status} ${detail}`);
  }
  return answer.json();
}

const campaignPath = (wf) => `campaigns/${encodeURIComponent(wf)}`;

// ------------------------------------------------------------------ the key

function forgetKey(message) {
  sessionStorage.removeItem(KEY_STORE);
  for (const id of ["dashboard", "campaigns", "report", "failures"]) show(id, false);
  show("login", true);
  $("forget").hidden = true;
  $("shop").hidden = true;
  const err = $("login-error");
  err.textContent = message || "";
  err.hidden = !message;
  setStatus("");
  $("api-key").focus();
}

function onKey(event) {
  event.preventDefault();
  const value = $("api-key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_STORE, value);
  $("api-key").value = "";
  start();
}

// ------------------------------------------------------------------ the dashboard

function card(label, main, ...extra) {
  return el("div", { class: "card" }, el("div", { class: "label", text: label }), el("div", { class: "value" }, main),
    ...extra);
}

function renderDashboard(d) {
  $("shop").textContent = `shop ${d.shop_id}`;
  $("shop").hidden = false;
  $("dashboard-today").textContent = `today ${d.today}`;
  const cards = [card("campaigns", num("campaigns", d.campaigns))];
  for (const k of ["sent", "reached", "orders", "revenue", "cost", "inquiry_rate", "conversion_rate"]) {
    const today = el("div", { class: "sub" }, "today ", num(`today_figures.${k}`, d.today_figures[k]));
    if (k in d.change) today.append(" (", num(`change.${k}`, d.change[k], { signed: true, cls: "num change" }), " on yesterday)");
    cards.push(card(LABELS[k], num(`totals.${k}`, d.totals[k]), today));
  }
  $("dashboard-cards").replaceChildren(...cards);
  const cols = ["sent", "reached", "replied", "orders", "revenue", "cost"];
  table($("months"), ["month", "phase", ...cols],
    d.months.map((m, i) => el("tr", {}, el("td", { text: m.month.slice(0, 7) }), el("td", { text: m.phase_name }),
      ...cols.map((k) => num(`months.${i}.${k}`, m[k], { tag: "td" })))));
  $("months-box").hidden = d.months.length === 0;
  show("dashboard", true);
}

// ------------------------------------------------------------------ the campaign list

const list = { next: null, rows: 0 };

function when(iso) {
  const t = new Date(iso);
  return Number.isNaN(t.getTime()) ? iso : `${t.toISOString().slice(0, 16).replace("T", " ")} UTC`;
}

async function loadCampaigns(more = false) {
  const page = await api("campaigns", { params: { limit: CAMPAIGN_PAGE, after: more ? list.next : null } });
  const body = more ? $("campaign-list").tBodies[0] : null;
  const rows = page.campaigns.map((c, j) => {
    const i = (more ? list.rows : 0) + j;
    const link = el("a", { href: `#campaign=${encodeURIComponent(c.workflow_id)}`, text: c.workflow_id,
      "data-field": `campaigns.${i}.workflow_id` });
    return el("tr", {}, el("td", {}, link), el("td", { text: c.kind }), el("td", { text: c.state }),
      el("td", { text: when(c.created_at) }), el("td", { text: when(c.updated_at) }));
  });
  if (body) body.append(...rows);
  else {
    table($("campaign-list"), ["campaign", "kind", "state", "created", "updated"], rows);
    if (rows.length === 0) $("campaign-list").tBodies[0].append(el("tr", {}, el("td", { colSpan: 5, text: "no campaign yet" })));
  }
  list.rows = (more ? list.rows : 0) + page.campaigns.length;
  list.next = page.next;
  $("campaigns-more").hidden = !page.next;
}

// ------------------------------------------------------------------ a campaign's report

const view = { wf: null, report: null, seq: 0 };

function phaseName(rep, index) {
  const p = rep.phases.find((x) => x.phase === index);
  return p ? p.name : `phase ${index}`;
}

function figureCards(prefix, f) {
  return [...FIGURES.map((k) => card(LABELS[k], num(`${prefix}${k}`, f[k]))),
    el("div", { class: "card minor" }, ...MINOR.map((k) => el("div", { class: "pair" },
      el("span", { class: "label", text: LABELS[k] }), num(`${prefix}${k}`, f[k]))))];
}

function phaseCard(p, i) {
  const days = p.first_day ? (p.first_day === p.last_day ? p.first_day : `${p.first_day} \u2026 ${p.last_day}`) : "not started";
  const big = FIGURES.map((k) => el("div", { class: "pair" }, el("span", { class: "label", text: LABELS[k] }),
    num(`phases.${i}.${k}`, p[k])));
  const small = MINOR.map((k) => el("div", { class: "pair minor" }, el("span", { class: "label", text: LABELS[k] }),
    num(`phases.${i}.${k}`, p[k])));
  const states = el("ul", { class: "states" }, ...Object.entries(p.states).map(([k, n]) =>
    el("li", {}, el("span", { text: k.replace(":", ": ") }), " ", num(`phases.${i}.states.${k}`, n))));
  return el("article", { class: "card phase", "data-phase": String(p.phase) },
    el("h4", {}, el("span", { class: "series-dot", "data-series": String(p.phase % 6) }), p.name),
    el("div", { class: "muted", text: days }), ...big, ...small, states);
}

function renderReport(rep) {
  $("report-title").textContent = rep.workflow_id;
  $("report-meta").textContent = `${rep.kind} \u00b7 ${rep.state} \u00b7 refreshed ${when(rep.refreshed_at)}` +
    (rep.attributed ? "" : " \u00b7 orders not attributed yet");
  $("report-totals").replaceChildren(...figureCards("totals.", rep.totals));
  $("phase-cards").replaceChildren(...rep.phases.map(phaseCard));
  renderTrend(rep);
  renderFunnel(rep.funnel);
  show("report", true);
}

// The daily trend as an SVG line chart, one line per phase, for the chosen metric.
function renderTrend(rep) {
  const metric = $("trend-metric").value;
  const box = $("trend-chart");
  const days = [...new Set(rep.trend.map((t) => t.day))].sort();
  const value = (t) => Number(t[metric]);
  const W = 760, H = 260, L = 64, R = 16, T = 16, B = 40;
  const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", class: "trend",
    "aria-label": `daily ${metric} per phase` });
  if (days.length === 0) {
    chart.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "axis" }, "no day yet"));
    box.replaceChildren(chart);
    renderTrendTable(rep);
    return;
  }
  const max = Math.max(0, ...rep.trend.map(value));
  const step = niceStep(max / 4, !MONEY.has(metric));
  const top = step * Math.max(1, Math.ceil(max / step));
  const x = (day) => L + (days.length === 1 ? (W - L - R) / 2 : (days.indexOf(day) * (W - L - R)) / (days.length - 1));
  const y = (v) => T + (H - T - B) * (1 - v / top);
  for (let k = 0; k * step <= top + step / 2; k++) {
    const v = k * step;
    chart.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }),
      svg("text", { x: L - 8, y: y(v) + 4, "text-anchor": "end", class: "axis" },
        MONEY.has(metric) ? formatMoney(v.toFixed(2)) : formatCount(Math.round(v))));
  }
  const every = Math.max(1, Math.ceil(days.length / 8));
  days.forEach((d, j) => {
    if (j % every === 0 || j === days.length - 1) {
      chart.append(svg("text", { x: x(d), y: H - B + 18, "text-anchor": "middle", class: "axis" }, d.slice(5)));
    }
  });
  const phases = [...new Set(rep.trend.map((t) => t.phase))].sort((a, b) => a - b);
  for (const ph of phases) {
    const points = rep.trend.map((t, i) => [t, i]).filter(([t]) => t.phase === ph);
    const series = String(ph % 6);
    chart.append(svg("polyline", { points: points.map(([t]) => `${x(t.day)},${y(value(t))}`).join(" "),
      class: "line", "data-series": series }));
    for (const [t, i] of points) {
      const dot = svg("circle", { cx: x(t.day), cy: y(value(t)), r: 4, class: "dot", "data-series": series,
        "data-point": `trend.${i}.${metric}`, "data-value": JSON.stringify(t[metric]) });
      dot.append(svg("title", {}, `${phaseName(rep, ph)} ${t.day}: ${metric} ${format(metric, t[metric])}`));
      chart.append(dot);
    }
  }
  const legend = el("div", { class: "legend" }, ...phases.map((ph) =>
    el("span", {}, el("span", { class: "series-dot", "data-series": String(ph % 6) }), phaseName(rep, ph))));
  box.replaceChildren(chart, legend);
  renderTrendTable(rep);
}

// A round tick step of at least `raw` (1, 2 or 5 times a power of ten; whole numbers for counts).
function niceStep(raw, whole) {
  if (!(raw > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw);
  return whole ? Math.max(1, Math.round(step)) : step;
}

function renderTrendTable(rep) {
  const cols = ["sent", "failed", "reached", "replied", "converted", "orders", "revenue", "cost"];
  table($("trend-table"), ["phase", "day", ...cols], rep.trend.map((t, i) =>
    el("tr", {}, el("td", { text: phaseName(rep, t.phase) }), el("td", { text: t.day }),
      ...cols.map((k) => num(`trend.${i}.${k}`, t[k], { tag: "td" })))));
}

// The funnel (R-ED-5, K-EDM: potential -> reached -> handshake -> ordered -> repurchased) when the report has one:
// the campaign's stages as bars (each buyer once) with each stage's conversion from the one before, then the same
// stages per channel (phase) as a table.
function renderFunnel(funnel) {
  $("funnel-box").hidden = !funnel;
  if (!funnel) return;
  const max = Math.max(1, ...funnel.stages.map((s) => s.count));
  const bars = funnel.stages.map((s, i) => {
    const bar = svg("svg", { viewBox: "0 0 100 10", preserveAspectRatio: "none", class: "bar" });
    bar.append(svg("rect", { x: 0, y: 0, height: 10, width: (100 * s.count) / max, class: "fill" }));
    return el("div", { class: "funnel-row" }, el("span", { class: "label", text: s.stage }), bar,
      num(`funnel.stages.${i}.count`, s.count), num(`funnel.stages.${i}.conversion`, s.conversion, { cls: "share muted" }));
  });
  const perChannel = el("table", { class: "grid" });
  table(perChannel, ["stage", ...funnel.channels.flatMap((c) => [`${c.name} (${c.channel ?? DASH})`, "conversion"])],
    funnel.stages.map((s, i) => el("tr", {}, el("td", { text: s.stage }), ...funnel.channels.flatMap((c, j) => [
      num(`funnel.channels.${j}.stages.${i}.count`, c.stages[i].count, { tag: "td" }),
      num(`funnel.channels.${j}.stages.${i}.conversion`, c.stages[i].conversion, { tag: "td" })]))));
  $("funnel").replaceChildren(...bars, el("div", { class: "scroll" }, perChannel));
}

// ------------------------------------------------------------------ failures

const failures = { cursors: [null], index: 0, next: null };

function failureParams() {
  const state = $("failure-state").value;
  return {
    limit: PAGE_SIZE, failures: state ? null : "true", state: state || null,
    reason: $("failure-reason").value || null, phase: $("failure-phase").value || null,
    after: failures.cursors[failures.index],
  };
}

async function loadFailures() {
  const wf = view.wf;
  const page = await api(`${campaignPath(wf)}/recipients`, { params: failureParams() });
  if (wf !== view.wf) return;
  const rows = page.recipients.map((r, i) => el("tr", { "data-row": String(i) },
    el("td", { text: phaseName(view.report, r.phase), "data-field": `recipients.${i}.phase`, "data-value": String(r.phase) }),
    num(`recipients.${i}.consumer_id`, r.consumer_id, { tag: "td", cls: "id" }),
    el("td", { text: r.day, "data-field": `recipients.${i}.day` }),
    el("td", { text: r.channel, "data-field": `recipients.${i}.channel` }),
    el("td", { text: r.state, class: `state state-${r.state}`, "data-field": `recipients.${i}.state` }),
    el("td", { text: r.reason ?? DASH, "data-field": `recipients.${i}.reason` }),
    el("td", { text: when(r.decided_at) })));
  table($("failure-table"), ["phase", "buyer", "day", "channel", "state", "reason", "decided"], rows);
  if (rows.length === 0) $("failure-table").tBodies[0].append(el("tr", {}, el("td", { colSpan: 7, text: "no failure" })));
  failures.next = page.next;
  $("failures-prev").disabled = failures.index === 0;
  $("failures-next").disabled = !page.next;
  $("failures-page").textContent = `page ${failures.index + 1}`;
  $("failures").dataset.loads = String(Number($("failures").dataset.loads || 0) + 1); // pages drawn (the test waits on it)
}

function resetFailures(rep) {
  const reasons = [...new Set(rep.phases.flatMap((p) => Object.keys(p.states).filter((k) => k.includes(":"))
    .map((k) => k.slice(k.indexOf(":") + 1))))].sort();
  $("failure-reason").replaceChildren(el("option", { value: "", text: "any" }),
    ...reasons.map((r) => el("option", { value: r, text: r })));
  $("failure-phase").replaceChildren(el("option", { value: "", text: "any" }),
    ...rep.phases.map((p) => el("option", { value: String(p.phase), text: p.name })));
  $("failure-state").value = "";
  failures.cursors = [null];
  failures.index = 0;
}

async function turnPage(step) {
  if (step > 0 && failures.next) {
    failures.cursors = failures.cursors.slice(0, failures.index + 1).concat([failures.next]);
    failures.index += 1;
  } else if (step < 0 && failures.index > 0) {
    failures.index -= 1;
  } else return;
  await guarded(loadFailures);
}

async function refilter() {
  failures.cursors = [null];
  failures.index = 0;
  await guarded(loadFailures);
}

// ------------------------------------------------------------------ routing

function openedCampaign() {
  const m = /^#campaign=(.+)$/.exec(location.hash);
  return m ? decodeURIComponent(m[1]) : null;
}

async function openCampaign(wf, { refresh = false } = {}) {
  const seq = ++view.seq;
  view.wf = wf;
  setStatus(refresh ? "refreshing the report\u2026" : "loading the report\u2026");
  const rep = await api(`${campaignPath(wf)}/report${refresh ? "/refresh" : ""}`, { method: refresh ? "POST" : "GET" });
  if (seq !== view.seq) return;
  view.report = rep;
  show("campaigns", false);
  renderReport(rep);
  resetFailures(rep);
  show("failures", true);
  await loadFailures();
  setStatus("");
  document.body.dataset.campaign = wf; // the page has drawn this campaign (the browser test waits on it)
}

async function route() {
  const wf = openedCampaign();
  if (wf) return openCampaign(wf);
  view.wf = null;
  delete document.body.dataset.campaign;
  show("report", false);
  show("failures", false);
  show("campaigns", true);
}

async function guarded(fn) {
  try {
    await fn();
  } catch (e) {
    if (!(e instanceof KeyRefused)) setStatus(e.message, true);
  }
}

async function start() {
  if (!apiKey()) return forgetKey("");
  show("login", false);
  $("forget").hidden = false;
  setStatus("loading\u2026");
  await guarded(async () => {
    const [dash] = await Promise.all([api("dashboard"), loadCampaigns()]);
    renderDashboard(dash);
    setStatus("");
    document.body.dataset.ready = "true";
    await route();
  });
}

$("key-form").addEventListener("submit", onKey);
$("forget").addEventListener("click", () => forgetKey(""));
$("campaigns-more").addEventListener("click", () => guarded(() => loadCampaigns(true)));
$("report-close").addEventListener("click", () => { location.hash = ""; });
$("report-refresh").addEventListener("click", () => guarded(() => openCampaign(view.wf, { refresh: true })));
$("trend-metric").addEventListener("change", () => view.report && renderTrend(view.report));
for (const id of ["failure-state", "failure-reason", "failure-phase"]) $(id).addEventListener("change", refilter);
$("failures-prev").addEventListener("click", () => turnPage(-1));
$("failures-next").addEventListener("click", () => turnPage(1));
window.addEventListener("hashchange", () => { if (apiKey()) guarded(route); });
start();
