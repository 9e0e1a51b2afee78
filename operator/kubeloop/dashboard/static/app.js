// Kubeloop dashboard: renders the server's snapshots (server-sent events) as four pages.
// Every text from the cluster goes in as textContent; only the drift charts, SVG made and
// escaped by kubeloop.drift.charts on the server, are inserted as markup.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const TOKEN = document.querySelector('meta[name="kubeloop-token"]').content;
let state = null;
let drift = { key: "", version: "", data: null, loading: false };

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "onclick") el.addEventListener("click", v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const c of children.flat()) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

const short = (sha, n = 12) => (sha ? sha.slice(0, n) : "-");
const fmt = (v) => (v === null || v === undefined ? "-" : typeof v === "number" ? Number(v.toPrecision(4)).toString() : String(v));
const phase = (p) => h("span", { class: `chip phase-${p || "none"}`, "data-phase": p || "" }, p || "-");
const link = (href, text) => h("a", { href }, text);
const keyOf = (o) => `${o.namespace}/${o.name}`;
const route = () => (location.hash.replace(/^#\/?/, "") || "models").split("/").map(decodeURIComponent);

function table(headers, rows, attrs) {
  return h("table", attrs || {}, h("thead", {}, h("tr", {}, headers.map((x) => h("th", {}, x)))), h("tbody", {}, rows));
}

// --- Models: data fingerprint -> runs -> artifact -> deployment tracks ------------------------

function metricsCell(run) {
  const m = run.metric;
  const value = run.metrics[m];
  const champion = run.championMetrics[m];
  if (value === undefined) return h("td", {}, "-");
  return h("td", { "data-metric": m, "data-value": value, "data-champion": champion ?? "" },
    `${m} ${fmt(value)}`, champion !== undefined ? h("span", { class: "muted" }, ` vs champion ${fmt(champion)}`) : null);
}

function gatesCell(run) {
  const gates = run.gates.map((g) => h("span", { class: `chip ${g.passed ? "ok" : "bad"}`, title: g.message || "", "data-gate": g.name },
    `${g.name} ${g.passed ? "✓" : "✗"}`));
  const failure = run.failure ? h("div", { class: "verdict-drifted failure", "data-failure": run.failure.reason }, `${run.failure.reason}: ${run.failure.message}`) : null;
  return h("td", { class: "wrap" }, gates.length ? gates : h("span", { class: "muted" }, "-"), failure);
}

function modelsPage() {
  const page = [h("h1", {}, "Models"), h("p", { class: "muted" }, "Lineage of every model: data fingerprint → TrainingRun → artifact sha256 → ModelDeployment tracks.")];
  if (!state.models.length) page.push(h("p", { class: "muted" }, "No TrainingRuns visible."));
  for (const model of state.models) {
    const rows = model.runs.map((run) => h("tr", { "data-run": run.name },
      h("td", { class: "mono", title: run.dataSource }, `${run.dataSource}`, h("br"), h("span", { class: "muted", "data-fingerprint": run.dataFingerprint }, short(run.dataFingerprint, 16))),
      h("td", {}, h("span", { class: "arrow" }, "→"), run.trials ? link(`#/runs/${run.namespace}/${run.name}`, run.name) : run.name,
        run.retrainReason ? h("span", { class: "chip" }, `retrain: ${run.retrainReason}`) : null),
      h("td", {}, phase(run.phase)),
      metricsCell(run),
      gatesCell(run),
      h("td", { class: "mono", "data-sha256": run.sha256, title: run.uri }, h("span", { class: "arrow" }, "→"), short(run.sha256)),
      h("td", {}, run.servedBy.length ? run.servedBy.map((t) => h("a", { class: "chip ok", href: `#/rollout/${run.namespace}/${t.deployment}`, "data-served": `${t.deployment}/${t.track}` },
        `md/${t.deployment} ${t.track} ${t.weight}%`)) : h("span", { class: "muted" }, "not served")),
    ));
    page.push(h("section", { class: "card", "data-model": keyOf(model) },
      h("h2", {}, model.name, h("span", { class: "muted" }, `  ${model.namespace}`)),
      table(["data", "run", "phase", "metric", "gates / validation", "artifact", "served by"], rows, { class: "lineage" })));
  }
  return page;
}

// --- Rollouts ---------------------------------------------------------------------------------

function rolloutsPage() {
  const rows = state.rollouts.map((r) => h("tr", { "data-rollout": keyOf(r) },
    h("td", {}, link(`#/rollout/${r.namespace}/${r.name}`, r.name)), h("td", {}, r.namespace), h("td", {}, phase(r.phase)),
    h("td", {}, r.tracks.map((t) => `${t.track} ${t.weight}%`).join(" / ")), h("td", { class: "wrap" }, r.message)));
  return [h("h1", {}, "Rollouts"), rows.length ? table(["name", "namespace", "phase", "weights", "message"], rows) : h("p", { class: "muted" }, "No ModelDeployments visible.")];
}

function weightChart(points) {
  const W = 640, H = 200, L = 40, R = 12, T = 14, B = 30;
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "weights", "data-points": points.length });
  svg.append(s("title", {}, "Stable and canary weight over time (since the dashboard started)"));
  const pw = W - L - R, ph = H - T - B;
  for (const v of [0, 50, 100]) {
    const y = T + ph - (ph * v) / 100;
    svg.append(s("line", { x1: L, x2: W - R, y1: y, y2: y, stroke: "#d9e0e6" }), s("text", { x: L - 6, y: y + 4, "font-size": 10, "text-anchor": "end" }, `${v}%`));
  }
  if (!points.length) return svg;
  const times = points.map((p) => Date.parse(p.time));
  const t0 = times[0], t1 = Math.max(Date.now(), times[times.length - 1]), span = t1 - t0 || 1;
  const x = (t) => L + (pw * (t - t0)) / span, y = (v) => T + ph - (ph * v) / 100;
  for (const [track, colour] of [["stable", "#5b7083"], ["canary", "#e07b24"]]) {
    let d = "";
    points.forEach((p, i) => {
      const next = i + 1 < points.length ? times[i + 1] : t1;
      d += `${i ? "L" : "M"}${x(times[i]).toFixed(1)},${y(p[track]).toFixed(1)} L${x(next).toFixed(1)},${y(p[track]).toFixed(1)} `;
    });
    svg.append(s("path", { d, fill: "none", stroke: colour, "stroke-width": 2.5, class: `line-${track}` }));
  }
  points.forEach((p, i) => svg.append(s("circle", { cx: x(times[i]), cy: y(p.canary), r: 3, fill: "#e07b24", class: "point", "data-time": p.time, "data-canary": p.canary, "data-stable": p.stable, "data-step": p.step ?? "" },
    s("title", {}, `${p.time}: stable ${p.stable}%, canary ${p.canary}% (step ${p.step ?? "-"})`))));
  svg.append(s("text", { x: L, y: H - 8, "font-size": 10 }, new Date(t0).toLocaleTimeString()), s("text", { x: W - R, y: H - 8, "font-size": 10, "text-anchor": "end" }, new Date(t1).toLocaleTimeString()));
  svg.append(s("g", { "font-size": 11 }, s("rect", { x: W - 170, y: 2, width: 10, height: 10, fill: "#5b7083" }), s("text", { x: W - 156, y: 11 }, "stable"),
    s("rect", { x: W - 100, y: 2, width: 10, height: 10, fill: "#e07b24" }), s("text", { x: W - 86, y: 11 }, "canary")));
  return svg;
}

// The last button's outcome, kept across re-renders (a snapshot may arrive at any moment).
let actionResult = { key: "", className: "", text: "" };

function showResult(key, className, text) {
  actionResult = { key, className, text };
  const el = document.getElementById("action-result");
  if (el && el.dataset.key === key) [el.className, el.textContent] = [className, text];
}

async function act(command, r, full) {
  const key = keyOf(r);
  showResult(key, "", `${command}…`);
  try {
    const response = await fetch("/api/action", {
      method: "POST", headers: { "Content-Type": "application/json", "X-Kubeloop-Token": TOKEN },
      body: JSON.stringify({ command, namespace: r.namespace, name: r.name, full: !!full }),
    });
    const answer = await response.json();
    showResult(key, answer.ok ? "ok" : "error", answer.ok ? answer.message : `error: ${answer.error}`);
  } catch (e) {
    showResult(key, "error", `error: the dashboard did not answer (${e.message}); is it still running?`);
  }
}

function rolloutPage(namespace, name) {
  const r = state.rollouts.find((x) => x.namespace === namespace && x.name === name);
  if (!r) return [h("h1", {}, `ModelDeployment ${namespace}/${name}`), h("p", { class: "muted" }, "Not found (deleted, or not visible to you).")];
  const button = (command, label, cls, full) => h("button", { type: "button", class: cls || "", "data-action": full ? `${command}-full` : command, onclick: () => act(command, r, full) }, label);
  const steps = r.steps.map((st) => h("li", { class: st.state, "data-step": st.index, "aria-current": st.state === "current" ? "step" : null }, `${st.index}. ${st.text}`));
  const tracks = r.tracks.map((t) => h("tr", { "data-track": t.track },
    h("td", {}, t.track), h("td", { "data-weight": t.weight }, `${t.weight}%`), h("td", {}, t.trainingRun || "-"),
    h("td", { class: "mono", "data-sha256": t.sha256, title: t.uri }, short(t.sha256)), h("td", {}, `${t.readyReplicas}/${t.replicas}`)));
  const analysis = [...r.analysis].reverse().map((a) => h("tr", { "data-analysis": a.name, "data-passed": String(a.passed) },
    h("td", {}, a.time), h("td", {}, a.step ?? "-"), h("td", {}, a.name), h("td", { "data-value": a.value ?? "" }, fmt(a.value)),
    h("td", {}, `[${fmt(a.min)}, ${fmt(a.max)}]`),
    h("td", {}, h("span", { class: `chip ${a.passed ? "ok" : "bad"}` }, a.passed ? "pass" : "fail"), a.message ? ` ${a.message}` : "")));
  const conditions = r.conditions.map((c) => h("tr", {}, h("td", {}, c.type), h("td", {}, c.status), h("td", {}, c.reason), h("td", { class: "wrap" }, c.message)));
  return [
    h("h1", {}, `ModelDeployment ${r.namespace}/${r.name} `, phase(r.phase), r.paused ? h("span", { class: "chip phase-Paused" }, "paused") : null),
    h("p", { id: "rollout-message" }, r.message),
    h("div", { class: "card" },
      h("div", { class: "buttons" }, button("promote", "Promote"), button("promote", "Promote fully", "", true), button("abort", "Abort", "danger"),
        button("retry", "Retry"), button("undo", "Undo"), r.paused ? button("resume", "Resume") : button("pause", "Pause")),
      actionResult.key === keyOf(r)
        ? h("div", { id: "action-result", role: "status", "data-key": keyOf(r), class: actionResult.className }, actionResult.text)
        : h("div", { id: "action-result", role: "status", "data-key": keyOf(r) })),
    h("h2", {}, "Steps"), r.steps.length ? h("ol", { class: "steps", "data-current-step": r.currentStep ?? "" }, steps) : h("p", { class: "muted" }, "No rollout steps: a new model replaces the old at once."),
    h("h2", {}, "Tracks"), table(["track", "weight", "training run", "sha256", "ready"], tracks, { id: "tracks" }),
    h("h2", {}, "Weights over time"), h("div", { class: "charts" }, weightChart(r.weights)),
    h("h2", {}, "Analysis"), analysis.length ? table(["time", "step", "metric", "value", "bounds", "verdict"], analysis, { id: "analysis" }) : h("p", { class: "muted" }, "No analysis rounds yet."),
    h("h2", {}, "Conditions"), table(["type", "status", "reason", "message"], conditions),
    r.previous ? h("p", { class: "muted" }, `Undo goes back to ${r.previous}.`) : null,
  ];
}

// --- Drift ------------------------------------------------------------------------------------

function driftListPage() {
  const rows = state.drift.map((d) => h("tr", { "data-policy": keyOf(d) },
    h("td", {}, link(`#/drift/${d.namespace}/${d.name}`, d.name)), h("td", {}, d.namespace), h("td", {}, `md/${d.target}`),
    h("td", {}, d.drifted === null || d.drifted === undefined ? "-" : h("span", { class: d.drifted ? "verdict-drifted" : "verdict-ok" }, d.drifted ? "drifted" : "no drift")),
    h("td", {}, fmt(d.driftedShare)), h("td", {}, d.lastCheckTime || "-"), h("td", {}, d.retrains.length)));
  return [h("h1", {}, "Drift"), rows.length ? table(["policy", "namespace", "target", "verdict", "drifted share", "last check", "retrains"], rows) : h("p", { class: "muted" }, "No DriftPolicies visible.")];
}

function markup(svgText) {
  // SVG made and escaped by kubeloop.drift.charts on the server.
  const box = h("div", { class: "chart" });
  box.innerHTML = svgText;
  return box;
}

async function loadDrift(namespace, name, version) {
  const key = `${namespace}/${name}`;
  if (drift.loading || (drift.key === key && drift.version === version && drift.data)) return;
  drift.loading = true;
  try {
    const response = await fetch(`/api/drift/${encodeURIComponent(namespace)}/${encodeURIComponent(name)}`);
    const data = await response.json();
    drift = { key, version, data: response.ok && !data.error ? data : { error: data.error }, loading: false };
  } catch (e) {
    drift = { key, version, data: { error: `the dashboard did not answer (${e.message})` }, loading: false };
  }
  render();
}

// Performance drift: the live metric on labelled traffic beside the reference and the limit.
function performanceCard(p) {
  const worse = p.lowerIsBetter ? "above" : "below";
  const cls = p.degraded === true ? "chip bad" : p.degraded === false ? "chip ok" : "chip";
  return h("section", { class: "card", id: "performance", "data-metric": p.metric, "data-degraded": p.degraded ?? "" },
    h("h2", {}, "Performance ", h("span", { class: cls, id: "performance-verdict" }, p.verdict)),
    table(["metric", "live", "reference", "limit", "labels"], [h("tr", {},
      h("td", {}, p.metric), h("td", { "data-live": p.live ?? "" }, fmt(p.live)), h("td", { "data-reference": p.reference ?? "" }, fmt(p.reference)),
      h("td", { "data-limit": p.limit ?? "" }, fmt(p.limit)), h("td", { "data-labels": p.labels ?? "" }, fmt(p.labels)))]),
    h("p", { class: "muted" }, `Degraded when live ${p.metric} is ${worse} the limit (reference ${p.lowerIsBetter ? "+" : "−"} ${fmt(p.tolerance * 100)}%), judged on at least ${p.minLabels} labels.`));
}

function driftPage(namespace, name) {
  const summary = state.drift.find((x) => x.namespace === namespace && x.name === name);
  if (!summary) return [h("h1", {}, `DriftPolicy ${namespace}/${name}`), h("p", { class: "muted" }, "Not found (deleted, or not visible to you).")];
  const version = `${summary.lastCheckTime}|${summary.samples}|${summary.retrains.length}`;
  const key = `${namespace}/${name}`;
  if (drift.key !== key || drift.version !== version) loadDrift(namespace, name, version);
  const d = drift.key === key && drift.data ? drift.data : null;
  const page = [h("h1", {}, `DriftPolicy ${namespace}/${name} `,
    summary.drifted === null || summary.drifted === undefined ? null : h("span", { class: summary.drifted ? "chip bad" : "chip ok", id: "verdict" }, summary.drifted ? "drifted" : "no drift")),
    h("p", {}, `Target md/${summary.target} · last check ${summary.lastCheckTime || "-"} · samples ${fmt(summary.samples)} · drifted share ${fmt(summary.driftedShare)}`),
    summary.message ? h("p", { class: "muted" }, summary.message) : null,
    summary.report ? h("p", {}, "HTML report of the last check: ", h("a", { id: "drift-report", href: summary.report, "data-report": summary.report }, summary.report)) : null,
    summary.performance ? performanceCard(summary.performance) : null];
  if (!d) return [...page, h("p", { class: "muted" }, "Reading the reference profile and live counters…")];
  if (d.error) return [...page, h("p", { class: "verdict-drifted", id: "drift-error" }, `error: ${d.error}`)];
  if (d.problems.length) page.push(h("ul", { class: "problems", id: "drift-problems" }, d.problems.map((p) => h("li", {}, p))));
  page.push(h("p", { class: "muted" }, `Reference: the profile served by the stable model ${short(d.modelSha256)}; live: its stable pods' bin counters since they started (${d.pods.join(", ") || "no pods"}).`));
  for (const f of d.features) {
    page.push(h("section", { class: "feature card", "data-feature": f.name },
      h("h2", {}, f.label, " ", f.drifted === null || f.drifted === undefined ? null : h("span", { class: f.drifted ? "verdict-drifted" : "verdict-ok" }, f.drifted ? "drifted" : "no drift"),
        h("span", { class: "muted" }, f.test ? `  ${f.test} ${fmt(f.score)} · ${f.alpha !== null && f.alpha !== undefined ? `p ${fmt(f.pValue)} vs alpha ${fmt(f.alpha)}` : `threshold ${fmt(f.threshold)}`}` : "  not tested yet")),
      h("div", { class: "charts" }, f.chart ? markup(f.chart) : h("p", { class: "muted" }, "No reference profile to draw."), f.timeline ? markup(f.timeline) : null)));
  }
  const history = [...d.history].reverse().map((c) => h("tr", {}, h("td", {}, c.time), h("td", {}, h("span", { class: c.drifted ? "verdict-drifted" : "verdict-ok" }, c.drifted ? "drifted" : "no drift")),
    h("td", {}, fmt(c.driftedShare)), h("td", {}, fmt(c.samples)), h("td", {}, c.retrain || ""),
    h("td", {}, c.report ? h("a", { href: c.report, "data-report": c.report }, "report") : "")));
  page.push(h("h2", {}, "Checks"), history.length ? table(["time", "verdict", "drifted share", "samples", "retrain", "HTML report"], history) : h("p", { class: "muted" }, "No checks yet."));
  const retrains = d.retrains.map((r) => h("tr", { "data-retrain": r.name }, h("td", {}, r.name), h("td", {}, r.retrainReason), h("td", {}, phase(r.phase)), h("td", {}, r.created)));
  page.push(h("h2", {}, "Retrains it caused"), retrains.length ? table(["run", "reason", "phase", "created"], retrains) : h("p", { class: "muted" }, "None yet."));
  return page;
}

// --- Runs (sweeps) ------------------------------------------------------------------------------

function sweepChart(sweep) {
  const W = 640, H = 260, L = 56, R = 16, T = 16, B = 46;
  const param = sweep.parameters[0];
  const done = sweep.trials.filter((t) => typeof t.value === "number");
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img", class: "sweep", "data-parameter": param || "", "data-metric": sweep.metric });
  svg.append(s("title", {}, `${sweep.metric} by ${param || "trial"}; the winner is marked`));
  if (!done.length) { svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no finished trials yet")); return svg; }
  const xs = [...new Set(sweep.trials.map((t) => JSON.stringify(param ? t.params[param] : t.index)))];
  const numeric = xs.every((v) => typeof JSON.parse(v) === "number");
  if (numeric) xs.sort((a, b) => JSON.parse(a) - JSON.parse(b));
  const values = done.map((t) => t.value);
  let lo = Math.min(...values), hi = Math.max(...values);
  if (hi === lo) { lo -= 0.01; hi += 0.01; }
  const pad = (hi - lo) * 0.1; lo -= pad; hi += pad;
  const pw = W - L - R, ph = H - T - B;
  const x = (v) => L + pw * ((xs.indexOf(JSON.stringify(v)) + 0.5) / xs.length);
  const y = (v) => T + ph - (ph * (v - lo)) / (hi - lo);
  svg.append(s("line", { x1: L, x2: L, y1: T, y2: T + ph, stroke: "#90a4ae" }), s("line", { x1: L, x2: W - R, y1: T + ph, y2: T + ph, stroke: "#90a4ae" }));
  for (const v of [lo + pad, (lo + hi) / 2, hi - pad]) svg.append(s("text", { x: L - 6, y: y(v) + 4, "font-size": 10, "text-anchor": "end" }, fmt(v)));
  xs.forEach((v) => svg.append(s("text", { x: x(JSON.parse(v)), y: T + ph + 16, "font-size": 11, "text-anchor": "middle" }, JSON.parse(v))));
  svg.append(s("text", { x: L + pw / 2, y: H - 6, "font-size": 11, "text-anchor": "middle" }, param || "trial"));
  const others = sweep.parameters.slice(1);
  for (const t of done) {
    const label = `trial ${t.index}: ${Object.entries(t.params).map(([k, v]) => `${k}=${v}`).join(", ")} → ${sweep.metric} ${fmt(t.value)}${t.best ? " (winner)" : ""}`;
    const cx = x(param ? t.params[param] : t.index) + (others.length ? (others.map((o) => String(t.params[o])).join().length % 5 - 2) * 4 : 0);
    const attrs = { class: t.best ? "trial best" : "trial", "data-index": t.index, "data-value": t.value, "data-best": t.best };
    svg.append(t.best
      ? s("g", attrs, s("circle", { cx, cy: y(t.value), r: 8, fill: "none", stroke: "#c62828", "stroke-width": 2 }), s("circle", { cx, cy: y(t.value), r: 4.5, fill: "#e07b24" }),
        s("text", { x: cx + 11, y: y(t.value) + 4, "font-size": 11, fill: "#c62828" }, "winner"), s("title", {}, label))
      : s("g", attrs, s("circle", { cx, cy: y(t.value), r: 4.5, fill: "#5b7083" }), s("title", {}, label)));
  }
  return svg;
}

function runsPage(namespace, name) {
  if (!namespace) {
    const rows = state.sweeps.map((w) => h("tr", { "data-sweep": keyOf(w) }, h("td", {}, link(`#/runs/${w.namespace}/${w.name}`, w.name)), h("td", {}, w.namespace), h("td", {}, w.model),
      h("td", {}, phase(w.phase)), h("td", {}, w.trials.length), h("td", {}, w.bestTrial ?? "-")));
    return [h("h1", {}, "Runs"), h("p", { class: "muted" }, "TrainingRuns with a sweep: one trial per parameter combination."),
      rows.length ? table(["run", "namespace", "model", "phase", "trials", "winner"], rows) : h("p", { class: "muted" }, "No sweeps visible.")];
  }
  const w = state.sweeps.find((x) => x.namespace === namespace && x.name === name);
  if (!w) return [h("h1", {}, `TrainingRun ${namespace}/${name}`), h("p", { class: "muted" }, "No sweep by that name (deleted, or not visible to you).")];
  const params = [...new Set(w.trials.flatMap((t) => Object.keys(t.params)))];
  const rows = w.trials.map((t) => h("tr", { "data-trial": t.index, class: t.best ? "best" : "" }, h("td", {}, t.index, t.best ? h("span", { class: "chip ok" }, "winner") : null),
    h("td", {}, phase(t.phase)), params.map((p) => h("td", {}, fmt(t.params[p]))), h("td", { "data-value": t.value ?? "" }, fmt(t.value))));
  return [h("h1", {}, `Sweep ${w.namespace}/${w.name} `, phase(w.phase)), h("p", {}, `${w.metric} by ${w.parameters.join(", ") || "trial"}; winner: trial ${w.bestTrial ?? "-"}`),
    h("div", { class: "charts" }, sweepChart(w)), h("h2", {}, "Trials"), table(["trial", "phase", ...params, w.metric], rows, { id: "trials" })];
}

// --- frame ------------------------------------------------------------------------------------

function render() {
  if (!state) return;
  const [page, namespace, name] = route();
  document.querySelectorAll("nav a").forEach((a) => a.classList.toggle("active", a.dataset.nav === (page === "rollout" ? "rollouts" : page)));
  document.getElementById("scope").textContent = state.scope ? `namespace ${state.scope}` : "all namespaces";
  document.getElementById("errors").replaceChildren(...state.errors.map((e) => h("div", {}, e)));
  const content = page === "rollouts" ? rolloutsPage() : page === "rollout" ? rolloutPage(namespace, name)
    : page === "drift" ? (namespace ? driftPage(namespace, name) : driftListPage()) : page === "runs" ? runsPage(namespace, name) : modelsPage();
  const main = document.getElementById("page");
  main.replaceChildren(...content.filter(Boolean));
  main.dataset.version = state.version;
  main.dataset.page = page;
}

function connect() {
  const live = document.getElementById("live");
  const events = new EventSource("/api/events");
  events.addEventListener("state", (e) => {
    state = JSON.parse(e.data);
    live.textContent = "live";
    live.className = "live on";
    render();
  });
  events.addEventListener("error", () => {
    live.textContent = "reconnecting…";
    live.className = "live off";
  });
}

window.addEventListener("hashchange", () => { drift.version = ""; render(); });
connect();
