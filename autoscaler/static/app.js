// launch's dashboard: plain JavaScript, no framework. Each page polls the JSON API (autoscaler/dashboard_data.py)
// and draws itself with DOM calls (text is never parsed as HTML).
"use strict";

const POLL_MS = 2000;
// Okabe-Ito: told apart with any colour vision
const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"];
let timer = null;
let jobLog = { id: null, offset: 0, text: "" };

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k === "style") node.style.cssText = v;  // (CSSOM: allowed by the page's CSP, an attribute is not)
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : String(c));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const c of children.flat()) if (c) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function table(caption, headers, rows, empty) {
  if (!rows.length) return el("p", { class: "empty" }, empty || "none");
  return el("div", { class: "scroll" }, el("table", {},
    el("caption", {}, caption),
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, rows.map((r) => el("tr", {}, r.map((c) => el("td", {}, c)))))));
}

function amount(k, v) {
  if (k === "memory" || k === "object_store_memory") return (v / 2 ** 30).toFixed(1) + " GiB";
  return Number.isInteger(v) ? String(v) : v.toFixed(2);
}

function shape(res) {
  return Object.entries(res || {}).map(([k, v]) => `${k} ${amount(k, v)}`).join(", ") || "-";
}

function when(t) {
  return t ? new Date(t * 1000).toLocaleString() : "-";
}

function usd(v) {
  return "$" + (v || 0).toFixed(2);
}

async function api(path) {
  const r = await fetch("/api/" + path, { credentials: "same-origin", cache: "no-store" });
  if (r.status === 401) { location.reload(); throw new Error("not logged in"); }
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || r.statusText);
  return body;
}

function card(title, ...children) {
  return el("section", { class: "card", "aria-label": title }, el("h2", {}, title), ...children);
}

function bar(label, used, total) {
  const share = total > 0 ? Math.min(1, used / total) : 0;
  return el("div", { class: "bar" },
    el("span", { class: "bar-label" }, `${label}: ${amount(label, used)} of ${amount(label, total)} used`),
    el("span", { class: "bar-track", role: "img", "aria-label": `${Math.round(share * 100)}% used` },
      el("span", { class: "bar-fill", style: `width:${(share * 100).toFixed(1)}%` })));
}

// --- pages ---------------------------------------------------------------------------------------------

async function overview() {
  const o = await api("overview");
  const a = o.autoscaler;
  const live = a.alive ? `ticking (last tick ${a.last_tick_age_s}s ago)`
    : (a.last_tick_age_s === null ? "has not ticked" : `NOT ticking (last tick ${a.last_tick_age_s}s ago)`);
  const decisions = [
    ...Object.entries(a.launches).map(([t, n]) => ["launch", `${n} x ${t}`, a.launch_reasons[t] || ""]),
    ...a.terminations.map((t) => ["terminate", t.node, t.reason]),
    ...Object.entries(a.failures).map(([t, f]) => ["backoff", t, `${f.last_error} (retry in ${Math.round(f.backoff_s)}s)`]),
  ];
  return [
    el("div", { class: "grid" },
      card("Nodes", el("p", { class: "big", "data-testid": "node-count" }, String(o.nodes.reduce((s, n) => s + n.count, 0))),
        table("nodes by type and status", ["type", "status", "count"], o.nodes.map((n) => [n.node_type, n.status, n.count]))),
      card("Resources", ...Object.entries(o.resources).filter(([k]) => !k.startsWith("accelerator_type"))
        .map(([k, r]) => bar(k, r.used, r.total))),
      card("Cost", el("p", { class: "big", "data-testid": "cost-now" }, `${usd(o.cost_per_hour)}/h`),
        el("p", {}, o.max_cost_per_hour ? `cap ${usd(o.max_cost_per_hour)}/h` : "no max_cost_per_hour")),
      card("Autoscaler", el("p", { class: a.alive ? "ok" : "error", "data-testid": "autoscaler-live" }, live))),
    card("Pending demand", table("work waiting for resources", ["shape", "count"],
      o.demand.map((d) => [shape(d.shape), d.count]), "nothing waits")),
    card("Infeasible or blocked work", table("work no node can run, and why", ["shape", "count", "reason"],
      o.infeasible.map((d) => [typeof d.shape === "string" ? d.shape : shape(d.shape), d.count, d.reason]), "none")),
    card("Last decisions", table("the autoscaler's last tick", ["action", "what", "why"], decisions, "nothing to do")),
    card("Recent events", table("the autoscaler's last events, newest first", ["time", "event", "node type", "node"],
      a.recent_events.slice().reverse().map((e) => [when(e.ts), e.event, e.node_type || "", e.node || ""]), "none yet")),
  ];
}

function chart(series, cap) {
  const w = 720, h = 240, pad = 40;
  if (series.length < 1) return el("p", { class: "empty" }, "no history yet");
  const t0 = series[0].t, t1 = Math.max(series[series.length - 1].t, Date.now() / 1000);
  const topN = Math.max(1, ...series.map((s) => s.nodes));
  const topUsd = Math.max(0.01, cap || 0, ...series.map((s) => s.per_hour));
  const x = (t) => pad + (w - 2 * pad) * (t - t0) / Math.max(1, t1 - t0);
  const yN = (v) => h - pad - (h - 2 * pad) * v / topN;
  const yU = (v) => h - pad - (h - 2 * pad) * v / topUsd;
  const steps = (key, y) => series.map((s, i) => (i ? `L${x(s.t)},${y(series[i - 1][key])} ` : "") +
    `${i ? "L" : "M"}${x(s.t)},${y(s[key])}`).join(" ") + ` L${x(t1)},${y(series[series.length - 1][key])}`;
  return svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": "nodes and dollars per hour over time" },
    svg("line", { x1: pad, y1: h - pad, x2: w - pad, y2: h - pad, stroke: "#767676" }),
    svg("path", { d: steps("nodes", yN), fill: "none", stroke: COLOURS[0], "stroke-width": 2 }),
    svg("path", { d: steps("per_hour", yU), fill: "none", stroke: COLOURS[1], "stroke-width": 2, "stroke-dasharray": "6 4" }),
    cap ? svg("line", { x1: pad, y1: yU(cap), x2: w - pad, y2: yU(cap), stroke: COLOURS[5], "stroke-dasharray": "2 3" }) : null,
    svg("text", { x: pad - 4, y: pad, "text-anchor": "end", "font-size": 12 }, String(topN)),
    svg("text", { x: w - pad + 4, y: pad, "font-size": 12 }, usd(topUsd)),
    svg("text", { x: pad, y: h - pad + 16, "font-size": 12 }, new Date(t0 * 1000).toLocaleTimeString()),
    svg("text", { x: w - pad, y: h - pad + 16, "text-anchor": "end", "font-size": 12 }, "now"));
}

async function cost() {
  const c = await api("cost");
  const cap = c.max_cost_per_hour;
  return [
    el("div", { class: "grid" },
      card("Now", el("p", { class: "big", "data-testid": "cost-per-hour" }, `${usd(c.per_hour)}/h`),
        el("p", {}, `spot ${usd(c.spot_per_hour)}/h, on-demand ${usd(c.on_demand_per_hour)}/h`),
        el("p", {}, cap ? `${Math.round(100 * c.per_hour / cap)}% of max_cost_per_hour (${usd(cap)}/h)` : "no max_cost_per_hour")),
      card("Today (UTC)", el("p", { class: "big", "data-testid": "cost-today" }, usd(c.today_usd))),
      card("Since up", el("p", { class: "big", "data-testid": "cost-since-up" }, usd(c.since_up_usd)),
        el("p", {}, `since ${when(c.up_at)}`))),
    card("By node type", table("what each node type costs now", ["type", "nodes", "market", "$/h each", "$/h", "price from"],
      Object.entries(c.by_type).map(([t, b]) => [t, b.count, b.spot ? "spot" : "on-demand", b.per_hour_each.toFixed(4),
        b.per_hour.toFixed(4), b.source]), "no node")),
    card("Nodes and $/h over time", el("p", { class: "legend" },
      el("span", { style: `color:${COLOURS[0]}` }, "\u2014 nodes"), " ",
      el("span", { style: `color:${COLOURS[1]}` }, "- - $/h"), cap ? el("span", { style: `color:${COLOURS[5]}` }, " \u00b7\u00b7 cap") : null),
      chart(c.series, cap)),
  ];
}

let filters = { node_type: "", kind: "" };

async function timeline() {
  const q = new URLSearchParams(filters).toString();
  const e = await api("events?" + q);
  const select = (name, values, label) => el("label", {}, label + " ",
    el("select", { name, onchange: (ev) => { filters[name] = ev.target.value; refresh(); } },
      el("option", { value: "" }, "all"), values.map((v) => {
        const o = el("option", { value: v }, v);
        if (filters[name] === v) o.selected = true;
        return o;
      })));
  const detail = (ev) => ev.reason || ev.error || (ev.launches ? shape(ev.launches) : "") ||
    Object.entries(ev).filter(([k]) => !["ts", "event", "node", "node_type"].includes(k)).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ");
  return [
    el("form", { class: "filters", "aria-label": "filter the events", onsubmit: (ev) => ev.preventDefault() },
      select("node_type", e.node_types, "node type"), select("kind", e.kinds, "event")),
    card("Autoscaler timeline", table("launches, terminations, drains, backoff and preemptions, newest first",
      ["time", "event", "node type", "node", "why"],
      e.events.map((ev) => [when(ev.ts), ev.event, ev.node_type || "", ev.node || "", detail(ev)]), "no event")),
  ];
}

async function jobs(id) {
  if (id) return jobPage(id);
  const j = await api("jobs");
  return [card("Jobs", table("the cluster's jobs, newest first", ["job", "name", "state", "exit", "resources", "node", "submitted"],
    j.jobs.map((x) => [el("a", { href: `#/jobs/${x.id}` }, x.id), x.name, x.state,
      ["finished", "failed"].includes(x.state) ? String(x.exit_code) : "-", shape(x.resources), x.node || "-", when(x.submitted_at)]),
    "no job yet"))];
}

async function jobPage(id) {
  if (jobLog.id !== id) jobLog = { id, offset: 0, text: "" };
  const all = await api("jobs");
  const job = all.jobs.find((x) => x.id === id);
  for (let i = 0; i < 20; i++) {  // follow: what came since the last poll
    const chunk = await api(`jobs/${encodeURIComponent(id)}/logs?offset=${jobLog.offset}`);
    jobLog.text += chunk.data;
    jobLog.offset = chunk.offset;
    if (!chunk.data || chunk.done) break;
  }
  return [
    el("p", {}, el("a", { href: "#/jobs" }, "\u2190 all jobs")),
    card(`Job ${id}`, job ? el("dl", {},
      ["name", "state", "exit_code", "node", "message"].map((k) => [el("dt", {}, k), el("dd", {}, String(job[k] ?? ""))]),
      el("dt", {}, "resources"), el("dd", {}, shape(job.resources))) : el("p", {}, "unknown job")),
    card("Output", el("pre", { class: "log", "data-testid": "job-log", tabindex: "0" }, jobLog.text || "(nothing yet)")),
  ];
}

async function work() {
  const w = await api("work");
  const counts = (c) => Object.entries(c).map(([s, n]) => `${s}: ${n}`).join(", ") || "none";
  const part = (title, p) => [
    card(title, el("p", { "data-testid": `${title.toLowerCase()}-counts` }, counts(p.counts)),
      table(`the longest-running ${title.toLowerCase()}`, ["id", "name", "node", "running for"],
        p.slowest.map((x) => [x.id, x.name, x.node, `${x.running_s}s`]), "none running"),
      table(`failed ${title.toLowerCase()}, with their errors`, ["id", "name", "error"],
        p.failed.map((x) => [x.id, x.name, x.message]), "none failed")),
  ];
  return [...part("Tasks", w.tasks), ...part("Actors", w.actors),
    card("Placement groups", table("placement groups", ["id", "name", "state", "node", "submitted"],
      w.groups.map((g) => [g.id, g.name, g.state, g.node || "-", when(g.submitted_at)]), "no placement group"))];
}

async function nodes(id) {
  if (id) return nodePage(id);
  const n = await api("nodes");
  return [card("Nodes", table("the nodes the runtime knows", ["node", "type", "state", "running", "resources (available of total)", "registered"],
    n.nodes.map((x) => [el("a", { href: `#/nodes/${x.id}` }, x.id), x.node_type + (x.is_head ? " (head)" : ""),
      x.state + (x.draining ? ", draining" : "") + (x.preempt_at ? ", being preempted" : ""), x.running,
      Object.entries(x.total).map(([k, v]) => `${k} ${amount(k, x.available[k] || 0)}/${amount(k, v)}`).join(", "),
      when(x.registered_at)])))];
}

async function nodePage(id) {
  const n = await api(`nodes/${encodeURIComponent(id)}`);
  return [
    el("p", {}, el("a", { href: "#/nodes" }, "\u2190 all nodes")),
    card(`Node ${id}`, ...Object.entries(n.total).filter(([k]) => !k.startsWith("accelerator_type"))
      .map(([k, v]) => bar(k, v - (n.available[k] || 0), v))),
    card("Running here", table("what runs on this node", ["id", "kind", "name", "resources"],
      n.work.map((x) => [x.id, x.kind, x.name, shape(x.resources)]), "nothing")),
    card("Setup log", el("pre", { class: "log", tabindex: "0" }, n.setup_log || "(no setup log: set up by `launch up` or not at all)")),
  ];
}

// --- routing and polling ---------------------------------------------------------------------------------

const PAGES = { overview, cost, timeline, jobs, work, nodes };

async function refresh() {
  clearTimeout(timer);
  const [, page, id] = (location.hash || "#/overview").split("/");
  const draw = PAGES[page] || overview;
  document.querySelectorAll("nav a").forEach((a) => a.setAttribute("aria-current", a.dataset.page === page ? "page" : "false"));
  const main = document.getElementById("main");
  try {
    const content = await draw(id ? decodeURIComponent(id) : undefined);
    const focused = document.activeElement && document.activeElement.name;  // (a filter being used keeps focus)
    main.replaceChildren(...content);
    if (focused) { const f = main.querySelector(`[name="${focused}"]`); if (f) f.focus(); }
    document.getElementById("live").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    document.getElementById("live").textContent = `could not update: ${e.message}`;
  }
  timer = setTimeout(refresh, POLL_MS);
}

async function start() {
  try {
    const o = await api("overview");
    document.getElementById("cluster").textContent = o.cluster;
    document.getElementById("provider").textContent = o.provider;
    document.title = `${o.cluster} - launch dashboard`;
  } catch (e) { /* said by refresh */ }
  window.addEventListener("hashchange", () => { document.getElementById("main").focus({ preventScroll: true }); refresh(); });
  refresh();
}

start();
