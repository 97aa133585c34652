#!/usr/bin/env node
// Checks the Grafana dashboard and the alert rules against what the processes export, offline:
//  - the dashboard's structure: fixed uid, id null, a Prometheus data-source variable that every
//    panel and query uses, unique panel ids, a sane grid, only defined variables in queries;
//  - that it covers what operators need (jobs, throughput, latency, queue, cache hit ratio,
//    utilization, errors by gRPC code, Redis memory);
//  - every metric a panel or an alert reads, and every label it matches on, is in docs/api.md's
//    metrics table (plus Prometheus' `up`; kube-state-metrics' kube_* in alert rules only).
// tests/deploy/observability_test.py then checks the same names against a live scrape.
//
//   node check_monitoring.mjs [--self-test]
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import { documentedMetrics, selectors, seriesNames } from "./lib/promql.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const DASHBOARD = path.join(REPO, "deploy/base/grafana/qsearch.json");
const RULES = path.join(REPO, "deploy/base/monitoring/alerts.rules.yaml");
const API_DOC = path.join(REPO, "docs/api.md");

// Labels Prometheus or prometheus-operator attach to every scraped series.
const TARGET_LABELS = new Set(["job", "instance", "namespace", "pod", "service", "endpoint", "container"]);
const JOBS = new Set(["qsearch-scheduler", "qsearch-worker"]);
const GRAFANA_BUILTINS = new Set(["__rate_interval", "__range", "__interval", "__range_s", "__interval_ms"]);
const PANEL_TYPES = new Set(["row", "timeseries", "stat", "table", "gauge", "bargauge", "text"]);
// What the dashboard must show (the list), by the series each needs.
const REQUIRED = [
  "qsearch_jobs", "qsearch_jobs_finished_total", "qsearch_tasks_completed_total",
  "qsearch_task_duration_seconds_bucket", "qsearch_task_queue_wait_seconds_bucket",
  "qsearch_queue_lag", "qsearch_queue_pending", "qsearch_queue_length", "qsearch_queue_dead_letters",
  "qsearch_activation_cache_requests_total", "qsearch_worker_busy_threads", "qsearch_worker_threads",
  "qsearch_tasks_handed_back_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket",
  "qsearch_redis_memory_used_bytes", "qsearch_redis_memory_max_bytes", "up",
];
const ALERTS = ["QsearchWorkersAbsentWhileTasksWait", "QsearchTasksDeadLettered",
  "QsearchTaskLatencyRegression", "QsearchTargetDown", "QsearchRedisMemoryHigh"];

function checkExpr(where, expr, series, { allowKube }, errors) {
  for (const sel of selectors(expr)) {
    const known = series[sel.name];
    if (sel.name === "up" || (allowKube && /^kube_/.test(sel.name))) {
      for (const l of sel.labels) if (!TARGET_LABELS.has(l) && !allowKube) errors.push(`${where}: up has no label ${l}`);
      const job = /\bjob\s*=\s*"([^"]*)"/.exec(expr)?.[1];
      if (job !== undefined && !JOBS.has(job)) errors.push(`${where}: job "${job}" is not one of ${[...JOBS].join(", ")}`);
      continue;
    }
    if (!known) {
      errors.push(`${where}: ${sel.name} is not an exported metric (docs/api.md, "Metrics")`);
      continue;
    }
    for (const l of sel.labels) {
      if (!known.labels.includes(l) && !TARGET_LABELS.has(l)) errors.push(`${where}: ${sel.name} has no label ${l}`);
    }
  }
}

export function checkDashboard(board, series) {
  const errors = [];
  const e = (m) => errors.push(`dashboard: ${m}`);
  if (board.uid !== "qsearch") e(`uid is ${JSON.stringify(board.uid)}, want "qsearch" (links and provisioning key on it)`);
  if (board.id !== null) e("id must be null (Grafana assigns it)");
  if (!(Number.isInteger(board.schemaVersion) && board.schemaVersion >= 36)) e(`schemaVersion ${board.schemaVersion}`);
  const vars = board.templating?.list ?? [];
  const dsVar = vars.find((v) => v.type === "datasource");
  if (!dsVar || dsVar.query !== "prometheus") e("no data-source variable of type prometheus");
  const dsRef = dsVar ? `\${${dsVar.name}}` : null;
  const varNames = new Set(vars.map((v) => v.name));
  const panels = [];
  const stack = [...(board.panels ?? [])];
  while (stack.length) {
    const p = stack.shift();
    panels.push(p);
    stack.push(...(p.panels ?? []));
  }
  const ids = new Set();
  for (const p of panels) {
    const where = `panel ${JSON.stringify(p.title)}`;
    if (ids.has(p.id)) e(`${where}: id ${p.id} used twice`);
    ids.add(p.id);
    if (!PANEL_TYPES.has(p.type)) e(`${where}: unknown type ${p.type}`);
    const g = p.gridPos ?? {};
    if (![g.x, g.y, g.w, g.h].every(Number.isInteger) || g.x + g.w > 24) e(`${where}: bad gridPos ${JSON.stringify(g)}`);
    if (p.type === "row" || p.type === "text") continue;
    if (p.datasource?.uid !== dsRef) e(`${where}: data source ${JSON.stringify(p.datasource)} is not ${dsRef}`);
    const targets = p.targets ?? [];
    if (!targets.length) e(`${where}: no queries`);
    const refs = new Set();
    for (const t of targets) {
      if (refs.has(t.refId)) e(`${where}: refId ${t.refId} twice`);
      refs.add(t.refId);
      if (t.datasource && t.datasource.uid !== dsRef) e(`${where}: query data source is not ${dsRef}`);
      if (!t.expr) {
        e(`${where}: a query without expr`);
        continue;
      }
      for (const m of t.expr.matchAll(/\$\{?(\w+)\}?/g)) {
        if (!GRAFANA_BUILTINS.has(m[1]) && !varNames.has(m[1])) e(`${where}: $${m[1]} is not a variable of the dashboard`);
      }
      checkExpr(`dashboard ${where}`, t.expr, series, { allowKube: false }, errors);
    }
  }
  const exprs = panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr ?? ""));
  for (const name of REQUIRED) {
    if (!exprs.some((x) => selectors(x).some((s) => s.name === name))) e(`no panel shows ${name}`);
  }
  const hit = panels.filter((p) => /hit ratio/i.test(p.title ?? ""));
  if (hit.length !== 1 || (hit[0].targets ?? []).length !== 1) {
    e("needs exactly one \"hit ratio\" panel with one query (tests/deploy/observability_test.py reads it)");
  }
  if (!exprs.some((x) => /grpc_code\s*!=\s*"OK"/.test(x))) e("no panel of gRPC errors by code (grpc_code != \"OK\")");
  return errors;
}

export function checkRules(doc, series) {
  const errors = [];
  const names = [];
  for (const g of doc?.groups ?? []) {
    for (const r of g.rules ?? []) {
      const where = `alerts.rules.yaml ${r.alert ?? r.record}`;
      names.push(r.alert);
      if (r.record) errors.push(`${where}: recording rules make series no process exports (observability_test checks every rule's names against a scrape)`);
      if (!["critical", "warning", "info"].includes(r.labels?.severity)) errors.push(`${where}: severity label missing or unknown`);
      for (const a of ["summary", "description", "runbook"]) {
        if (!r.annotations?.[a]) errors.push(`${where}: no ${a} annotation`);
      }
      checkExpr(where, String(r.expr), series, { allowKube: true }, errors);
    }
  }
  for (const a of ALERTS) if (!names.includes(a)) errors.push(`alerts.rules.yaml: ${a} is missing`);
  return errors;
}

function load() {
  return {
    board: JSON.parse(fs.readFileSync(DASHBOARD, "utf8")),
    rules: parseYaml(fs.readFileSync(RULES, "utf8")),
    series: seriesNames(documentedMetrics(fs.readFileSync(API_DOC, "utf8"))),
  };
}

const MUTATIONS = [
  ["an invented metric", ({ board }) => { board.panels[2].targets[0].expr = "sum(qsearch_jobs_active)"; }, /qsearch_jobs_active is not an exported metric/],
  ["a label typo", ({ board }) => { board.panels[2].targets[0].expr = 'sum(qsearch_jobs{status="QUEUED"})'; }, /has no label status/],
  ["a hard-coded data source", ({ board }) => { board.panels[2].datasource = { type: "prometheus", uid: "prom" }; }, /is not \$\{datasource\}/],
  ["a duplicate panel id", ({ board }) => { board.panels[3].id = board.panels[2].id; }, /used twice/],
  ["an undefined variable", ({ board }) => { board.panels[2].targets[0].expr = 'sum(qsearch_jobs{job=~"$job"})'; }, /\$job is not a variable/],
  ["a second hit ratio panel", ({ board }) => { board.panels.push({ ...structuredClone(board.panels.find((p) => /hit ratio/i.test(p.title))), id: 999 }); }, /exactly one "hit ratio" panel/],
  ["no queue panels", ({ board }) => { board.panels = board.panels.filter((p) => !(p.targets ?? []).some((t) => /qsearch_queue_pending/.test(t.expr))); }, /no panel shows qsearch_queue_pending/],
  ["a fixed uid lost", ({ board }) => { board.uid = "abc"; }, /uid is "abc"/],
  ["an alert on an invented metric", ({ rules }) => { rules.groups[0].rules[1].expr = "increase(qsearch_tasks_dead_lettered_total[15m]) > 0"; }, /qsearch_tasks_dead_lettered_total is not an exported metric/],
  ["an alert without a runbook", ({ rules }) => { delete rules.groups[0].rules[0].annotations.runbook; }, /no runbook annotation/],
  ["a missing alert", ({ rules }) => { rules.groups[0].rules.pop(); }, /QsearchRedisMemoryHigh is missing/],
  ["an alert on an unknown job", ({ rules }) => { rules.groups[0].rules[3].expr = 'up{job="qsearch"} == 0'; }, /job "qsearch" is not one of/],
];

function run(input) {
  return [...checkDashboard(input.board, input.series), ...checkRules(input.rules, input.series)];
}

function main(argv) {
  if (argv[0] === "--self-test") {
    if (run(load()).length) {
      console.error("self-test: the files already fail; run without --self-test");
      return 1;
    }
    let failed = 0;
    for (const [what, mutate, want] of MUTATIONS) {
      const input = load();
      mutate(input);
      const errors = run(input);
      if (!errors.some((x) => want.test(x))) {
        failed++;
        console.error(`self-test: ${what}: not reported as ${want}; got:\n    ${errors.join("\n    ") || "(nothing)"}`);
      }
    }
    console.log(`check_monitoring.mjs self-test: ${MUTATIONS.length - failed} of ${MUTATIONS.length} deliberate breakages caught`);
    return failed ? 1 : 0;
  }
  const input = load();
  const errors = run(input);
  errors.forEach((x) => console.error(`  ${x}`));
  const queries = JSON.stringify(input.board).match(/"expr":/g)?.length ?? 0;
  console.log(`dashboard (${queries} queries) and alert rules: ${errors.length ? errors.length + " problem(s)" : "only exported metrics and labels, required panels present"}`);
  return errors.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exit(main(process.argv.slice(2)));
}
