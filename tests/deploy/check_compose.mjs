#!/usr/bin/env node
// Checks docker/compose.yaml without a container engine: the services the local stack needs,
// depends_on targets and their health checks, files mounted from the repository (which must
// exist, and for the dashboard, the alert rules and config.yaml must be the deploy/ originals),
// the Redis policies on the command lines, the workers' count and stop grace against their drain
// time, and the Prometheus and Grafana provisioning files the stack mounts.
//
//   node check_compose.mjs [docker/compose.yaml] [--self-test]
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parse as parseYaml } from "yaml";
import { DockerfileParser } from "dockerfile-ast";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const REQUIRED = ["scheduler", "worker", "redis-queue", "redis-cache", "prometheus", "grafana"];
// Files that must be mounted from deploy/ (one source for compose and Kubernetes).
const SINGLE_SOURCE = {
  "deploy/base/grafana/qsearch.json": "grafana",
  "deploy/base/monitoring/alerts.rules.yaml": "prometheus",
  "deploy/base/config/config.yaml": "scheduler",
};

function seconds(d) {
  const m = /^(\d+)(ms|s|m|h)?$/.exec(String(d ?? ""));
  if (!m) return NaN;
  return Number(m[1]) * { ms: 0.001, s: 1, m: 60, h: 3600 }[m[2] ?? "s"];
}

function mounts(svc, dir) {
  return (svc.volumes ?? []).map((v) => {
    if (typeof v === "object") return { source: v.source, target: v.target, bind: v.type === "bind" };
    const [source, target] = v.split(":");
    const bind = source.startsWith(".") || source.startsWith("/");
    return { source: bind ? path.resolve(dir, source) : source, target, bind };
  });
}

function commandLine(svc) {
  return Array.isArray(svc.command) ? svc.command : String(svc.command ?? "").split(/\s+/);
}

function redisArgs(svc) {
  const argv = commandLine(svc);
  const out = {};
  for (let i = 0; i < argv.length; i++) if (argv[i].startsWith("--")) out[argv[i].slice(2)] = argv[i + 1];
  return out;
}

export function checkCompose(text, file) {
  const errors = [];
  const dir = path.dirname(file);
  const e = (m) => errors.push(`compose: ${m}`);
  let doc;
  try {
    doc = parseYaml(text, { merge: true });
  } catch (x) {
    return [`compose: does not parse: ${x.message}`];
  }
  const services = doc.services ?? {};
  for (const s of REQUIRED) if (!services[s]) e(`service ${s} is missing`);
  const namedVolumes = new Set(Object.keys(doc.volumes ?? {}));
  const config = parseYaml(fs.readFileSync(path.join(REPO, "deploy/base/config/config.yaml"), "utf8"));

  const healthy = (name) => {
    const svc = services[name];
    if (!svc) return false;
    if (svc.healthcheck && !svc.healthcheck.disable) return true;
    if (svc.build) {
      const df = path.resolve(dir, svc.build.context ?? ".", svc.build.dockerfile ?? "Dockerfile");
      if (!fs.existsSync(df)) return false;
      const parsed = DockerfileParser.parse(fs.readFileSync(df, "utf8"));
      return parsed.getHEALTHCHECKs().some((h) => !/^\s*NONE/i.test(h.getRawArgumentsContent() ?? ""));
    }
    return false;
  };

  for (const [name, svc] of Object.entries(services)) {
    if (!svc.image) e(`${name}: no image`);
    else if (!/:[\w][\w.-]*(}|$)/.test(svc.image) || /:latest$/.test(svc.image)) e(`${name}: image ${svc.image} has no pinned tag`);
    if (svc.build) {
      const ctx = path.resolve(dir, svc.build.context ?? ".");
      if (!fs.existsSync(path.join(ctx, svc.build.dockerfile ?? "Dockerfile"))) e(`${name}: build file ${svc.build.dockerfile} not found in ${ctx}`);
    }
    const deps = Array.isArray(svc.depends_on)
      ? Object.fromEntries(svc.depends_on.map((d) => [d, { condition: "service_started" }]))
      : (svc.depends_on ?? {});
    for (const [dep, opts] of Object.entries(deps)) {
      if (!services[dep]) e(`${name}: depends on ${dep}, which is no service`);
      else if (!["service_started", "service_healthy", "service_completed_successfully"].includes(opts.condition)) e(`${name}: depends_on ${dep} has condition ${opts.condition}`);
      else if (opts.condition === "service_healthy" && !healthy(dep)) e(`${name}: waits for ${dep} to be healthy, but ${dep} has no health check`);
    }
    for (const m of mounts(svc, dir)) {
      if (m.bind && !fs.existsSync(m.source)) e(`${name}: mounts ${path.relative(REPO, m.source)}, which does not exist`);
      if (!m.bind && !namedVolumes.has(m.source)) e(`${name}: volume ${m.source} is not declared under volumes`);
      const rel = m.bind ? path.relative(REPO, m.source) : null;
      if (rel && rel.startsWith("docker/") && /\.(json|rules\.yaml)$/.test(rel)) {
        e(`${name}: mounts ${rel}: dashboards and rules come from deploy/, not copies`);
      }
    }
  }
  for (const [src, svcName] of Object.entries(SINGLE_SOURCE)) {
    const svc = services[svcName];
    if (svc && !mounts(svc, dir).some((m) => m.bind && m.source === path.join(REPO, src))) {
      e(`${svcName}: does not mount ${src}`);
    }
  }

  // Redis policies.
  const q = redisArgs(services["redis-queue"] ?? {});
  if (q.appendonly !== "yes") e("redis-queue: needs --appendonly yes");
  if (q["maxmemory-policy"] !== "noeviction") e("redis-queue: needs --maxmemory-policy noeviction");
  if (!(services["redis-queue"]?.volumes ?? []).length) e("redis-queue: its AOF is on no volume");
  const c = redisArgs(services["redis-cache"] ?? {});
  if (c["maxmemory-policy"] !== "allkeys-lru") e("redis-cache: needs --maxmemory-policy allkeys-lru");
  if (!c.maxmemory) e("redis-cache: needs --maxmemory");
  if (c.appendonly !== "no" || c.save !== "") e("redis-cache: must not persist (--save \"\" --appendonly no)");
  for (const r of ["redis-queue", "redis-cache"]) {
    if ((services[r]?.ports ?? []).length) e(`${r}: published to the host (no TLS, no password here: keep it on the compose network)`);
  }

  // qsearch processes.
  for (const role of ["scheduler", "worker"]) {
    const svc = services[role];
    if (!svc) continue;
    const argv = commandLine(svc);
    if (argv[0] !== role) e(`${role}: command does not start with "${role}"`);
    const ci = argv.indexOf("--config");
    if (ci < 0 || !mounts(svc, dir).some((m) => m.target === argv[ci + 1])) e(`${role}: --config is not a mounted file`);
    const env = svc.environment ?? {};
    const host = (url) => /^redis:\/\/(?:[^@]*@)?([^:/]+)/.exec(url ?? "")?.[1];
    if (host(env.QSEARCH_REDIS) !== "redis-queue") e(`${role}: QSEARCH_REDIS is not the redis-queue service`);
    if (host(env.QSEARCH_CACHE_REDIS) !== "redis-cache") e(`${role}: QSEARCH_CACHE_REDIS is not the redis-cache service`);
    if (!/^0\.0\.0\.0:\d+$/.test(env.QSEARCH_LISTEN ?? "")) e(`${role}: QSEARCH_LISTEN must bind 0.0.0.0 (health checks and the other containers)`);
    const blobs = mounts(svc, dir).find((m) => m.target === config["blob-dir"]);
    if (!blobs || blobs.bind) e(`${role}: blob-dir ${config["blob-dir"]} is not on a named volume`);
  }
  const sBlobs = mounts(services.scheduler ?? {}, dir).find((m) => m.target === config["blob-dir"]);
  const wBlobs = mounts(services.worker ?? {}, dir).find((m) => m.target === config["blob-dir"]);
  if (sBlobs && wBlobs && sBlobs.source !== wBlobs.source) e("scheduler and workers mount different blob volumes");
  const w = services.worker ?? {};
  if (!((w.deploy?.replicas ?? 1) >= 2)) e("worker: want 2 replicas (deploy.replicas)");
  const drain = config["drain-seconds"] ?? 20;
  if (!(seconds(w.stop_grace_period ?? "10s") >= drain + 5)) {
    e(`worker: stop_grace_period ${w.stop_grace_period ?? "10s (default)"} leaves no time after drain-seconds ${drain}`);
  }
  if (!(services.scheduler?.ports ?? []).some((p) => String(p).endsWith(":50051"))) e("scheduler: the API port 50051 is not published");

  // Prometheus: its config, the rules where the config looks, the scrape jobs the alerts use.
  const prom = services.prometheus;
  if (prom) {
    const pm = mounts(prom, dir);
    const cfgArg = commandLine(prom).find((a) => a.startsWith("--config.file="))?.split("=")[1] ?? "/etc/prometheus/prometheus.yml";
    const cfgMount = pm.find((m) => m.target === cfgArg && m.bind);
    if (!cfgMount || !fs.existsSync(cfgMount.source)) {
      e(`prometheus: ${cfgArg} is not mounted from a file in the repository`);
    } else {
      const pc = parseYaml(fs.readFileSync(cfgMount.source, "utf8"));
      const ruleTargets = pm.filter((m) => m.bind && /alerts\.rules\.yaml$/.test(m.source)).map((m) => m.target);
      const globs = (pc.rule_files ?? []).map((g) => new RegExp("^" + g.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, "[^/]*") + "$"));
      if (!ruleTargets.some((t) => globs.some((g) => g.test(t)))) e("prometheus: rule_files does not match where the alert rules are mounted");
      const jobs = new Map((pc.scrape_configs ?? []).map((s) => [s.job_name, s]));
      for (const j of ["qsearch-scheduler", "qsearch-worker"]) {
        const sc = jobs.get(j);
        if (!sc) {
          e(`prometheus.yml: no scrape job ${j} (the alerts and the dashboard use that name)`);
          continue;
        }
        const hosts = [
          ...(sc.static_configs ?? []).flatMap((s) => s.targets.map((t) => t.split(":")[0])),
          ...(sc.dns_sd_configs ?? []).flatMap((s) => s.names),
        ];
        const want = j === "qsearch-scheduler" ? "scheduler" : "worker";
        if (!hosts.includes(want)) e(`prometheus.yml: job ${j} does not scrape the ${want} service`);
        if (want === "worker" && !(sc.dns_sd_configs ?? []).length) e("prometheus.yml: workers are replicas: scrape them through DNS service discovery, not one static name");
      }
    }
  }

  // Grafana: the provisioning directory, the dashboard where the provider looks.
  const graf = services.grafana;
  if (graf) {
    const gm = mounts(graf, dir);
    const prov = gm.find((m) => m.bind && m.target === "/etc/grafana/provisioning");
    if (!prov) {
      e("grafana: /etc/grafana/provisioning is not mounted from the repository");
    } else {
      const dsDir = path.join(prov.source, "datasources");
      const ds = fs.existsSync(dsDir) ? fs.readdirSync(dsDir).flatMap((f) => parseYaml(fs.readFileSync(path.join(dsDir, f), "utf8")).datasources ?? []) : [];
      if (!ds.some((d) => d.type === "prometheus" && /^http:\/\/prometheus:9090/.test(d.url))) e("grafana: no provisioned Prometheus data source at http://prometheus:9090");
      const dbDir = path.join(prov.source, "dashboards");
      const providers = fs.existsSync(dbDir) ? fs.readdirSync(dbDir).flatMap((f) => parseYaml(fs.readFileSync(path.join(dbDir, f), "utf8")).providers ?? []) : [];
      const board = gm.find((m) => m.bind && /qsearch\.json$/.test(m.source));
      if (!board || !providers.some((p) => p.type === "file" && board.target.startsWith(p.options.path.replace(/\/$/, "") + "/"))) {
        e("grafana: no file provider loads the mounted dashboard");
      }
    }
  }
  return errors;
}

const MUTATIONS = [
  ["a depends_on on nothing", (s) => s.replace("      redis-cache:\n        condition: service_healthy\n\n  worker:", "      redis-cash:\n        condition: service_healthy\n\n  worker:"), /depends on redis-cash/],
  ["an evicting queue", (s) => s.replace("      - noeviction", "      - allkeys-lru"), /noeviction/],
  ["a persisting cache", (s) => s.replace('      - --appendonly\n      - "no"', '      - --appendonly\n      - "yes"'), /must not persist/],
  ["a copied dashboard", (s) => s.replace("../deploy/base/grafana/qsearch.json", "./grafana/qsearch.json"), /does not exist|does not mount deploy\/base\/grafana/],
  ["a missing file", (s) => s.replace("./prometheus/prometheus.yml:", "./prometheus/prom.yml:"), /does not exist/],
  ["one worker", (s) => s.replace("replicas: 2", "replicas: 1"), /want 2 replicas/],
  ["no drain time", (s) => s.replace("stop_grace_period: 30s", "stop_grace_period: 10s"), /stop_grace_period 10s/],
  ["a healthy wait on a service without a check", (s) => s.replace(/(\n  redis-cache:\n[\s\S]*?)    healthcheck:\n      test: \[CMD-SHELL, "redis-cli ping \| grep -qx PONG"\]\n      interval: 5s\n      timeout: 3s\n      retries: 20\n/, "$1"), /waits for redis-cache to be healthy/],
  ["an undeclared volume", (s) => s.replace("      - redis-queue:/data", "      - queue-data:/data"), /queue-data is not declared/],
];

function main(argv) {
  const self = argv.includes("--self-test");
  const file = path.resolve(argv.find((a) => !a.startsWith("--")) ?? path.join(REPO, "docker/compose.yaml"));
  const text = fs.readFileSync(file, "utf8");
  if (self) {
    if (checkCompose(text, file).length) {
      console.error("self-test: compose.yaml already fails; run without --self-test");
      return 1;
    }
    let failed = 0;
    for (const [what, mutate, want] of MUTATIONS) {
      const broken = mutate(text);
      const errors = broken === text ? ["(the mutation did not apply)"] : checkCompose(broken, file);
      if (!errors.some((x) => want.test(x))) {
        failed++;
        console.error(`self-test: ${what}: not reported as ${want}; got:\n    ${errors.join("\n    ") || "(nothing)"}`);
      }
    }
    console.log(`check_compose.mjs self-test: ${MUTATIONS.length - failed} of ${MUTATIONS.length} deliberate breakages caught`);
    return failed ? 1 : 0;
  }
  const errors = checkCompose(text, file);
  errors.forEach((x) => console.error(`  ${x}`));
  console.log(`${path.relative(REPO, file)}: ${Object.keys(parseYaml(text, { merge: true }).services ?? {}).length} services: ${errors.length ? errors.length + " problem(s)" : "ok"}`);
  return errors.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exit(main(process.argv.slice(2)));
}
