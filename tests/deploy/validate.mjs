#!/usr/bin/env node
// Validates a rendered kustomize overlay (`kubectl kustomize DIR | node validate.mjs ...`):
//  1. every object against its schema (kubernetes-models, @kubernetes-models/keda,
//     @kubernetes-models/prometheus-operator); a kind none of them has is an error, and so is a
//     field no schema knows (a typo would otherwise pass: the schemas allow extra properties);
//  2. qsearch's own invariants: resources and a locked-down securityContext on every container,
//     numeric probe ports and the right gRPC health service names, the worker's grace period
//     against its drain time, config.yaml keys the binary accepts, references that resolve
//     (Secrets, ConfigMaps, claims, Services, selectors), NetworkPolicies that keep Redis to
//     qsearch pods, the KEDA triggers, ServiceMonitors against the alert rules' job names, and
//     what each overlay promises (--profile).
//
//   node validate.mjs --profile gpu [--external-secrets a,b] [FILE]   (FILE or stdin)
//   node validate.mjs --self-test FILE     # FILE: a rendered gpu overlay; breaks it on purpose
//                                          # in many ways and checks each is reported
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { parseAllDocuments } from "yaml";
import {
  INT_SETTINGS, STRING_SETTINGS, allContainers, dependentVars, effectiveSettings,
  mapSelectorMatches, modelClass, podTemplates, qsearchRole, quantity, redisBytes, redisConf,
  selectorMatches, unknownFields, mountedFile,
} from "./lib/k8s.mjs";

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO = path.resolve(HERE, "..", "..");
const NAMESPACE = "qsearch";
const CLUSTER_SCOPED = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding",
  "PersistentVolume", "StorageClass", "PriorityClass", "ClusterTriggerAuthentication"]);

// What each rendering must (or must not) contain.
const PROFILES = {
  base: { redisCache: true, keda: false, monitoring: false, gpu: false, secrets: "external" },
  dev: { redisCache: false, keda: false, monitoring: false, gpu: false, secrets: "rendered" },
  "dev-with-components": { redisCache: false, keda: true, monitoring: true, gpu: false, secrets: "rendered" },
  gpu: { redisCache: true, keda: true, monitoring: true, gpu: true, secrets: "external" },
};
const SECRETS = ["qsearch-api-tokens", "qsearch-redis"];

export async function validate(docs, { profile, externalSecrets = [] }) {
  const errors = [];
  const P = PROFILES[profile];
  if (!P) return [`unknown profile ${profile} (one of ${Object.keys(PROFILES).join(", ")})`];
  const idOf = (d) => `${d?.kind ?? "?"}/${d?.metadata?.name ?? "?"}`;
  const err = (d, msg) => errors.push(`${typeof d === "string" ? d : idOf(d)}: ${msg}`);

  // --- 1. identity, schema, unknown fields ---------------------------------------------------
  const seen = new Set();
  const valid = [];
  for (const d of docs) {
    if (!d || typeof d !== "object" || !d.apiVersion || !d.kind || !d.metadata?.name) {
      err("document", `lacks apiVersion, kind or metadata.name: ${JSON.stringify(d)?.slice(0, 80)}`);
      continue;
    }
    const key = `${d.apiVersion}/${d.kind}/${d.metadata.namespace ?? ""}/${d.metadata.name}`;
    if (seen.has(key)) err(d, "defined twice");
    seen.add(key);
    if (CLUSTER_SCOPED.has(d.kind)) {
      if (d.metadata.namespace) err(d, "is cluster-scoped but has a namespace");
    } else if (d.metadata.namespace !== NAMESPACE) {
      err(d, `is in namespace ${d.metadata.namespace ?? "(none)"}, not ${NAMESPACE}`);
    }
    if (d.kind === "Secret" && d.data) {
      // kustomize writes long base64 as a literal block; the API server's decoder skips the
      // line breaks, the schema's "byte" format does not.
      for (const k of Object.keys(d.data)) d.data[k] = String(d.data[k]).replace(/\s+/g, "");
    }
    const cls = await modelClass(d.apiVersion, d.kind);
    if (!cls) {
      err(d, `unknown kind ${d.apiVersion} ${d.kind}: no schema to validate it against`);
      continue;
    }
    try {
      new cls(structuredClone(d)).validate();
    } catch (e) {
      err(d, `schema: ${e.message}`);
      continue;
    }
    for (const f of unknownFields(cls, d)) err(d, `unknown field ${f}`);
    valid.push(d);
  }
  docs = valid;

  const byKind = (kind) => docs.filter((d) => d.kind === kind);
  const named = (kind, name) => docs.find((d) => d.kind === kind && d.metadata.name === name);
  const configMaps = new Map(byKind("ConfigMap").map((c) => [c.metadata.name, c]));
  const secrets = new Map(byKind("Secret").map((s) => [s.metadata.name, s]));
  const services = byKind("Service");
  const templates = podTemplates(docs);
  const external = new Set(externalSecrets);

  const secretHasKey = (where, name, key) => {
    const s = secrets.get(name);
    if (!s) {
      if (!external.has(name)) err(where, `Secret ${name} is neither rendered nor declared external`);
      return;
    }
    if (key !== undefined && !(key in (s.data ?? {})) && !(key in (s.stringData ?? {}))) {
      err(where, `Secret ${name} has no key ${key}`);
    }
  };

  // --- 2. pods and containers ----------------------------------------------------------------
  for (const t of templates) {
    const pod = t.spec;
    const psc = pod.securityContext ?? {};
    if (t.owner.spec.selector && !selectorMatches(t.owner.spec.selector, t.labels)) {
      err(t.id, "its selector does not match its own pod template's labels");
    }
    if (t.labels["app.kubernetes.io/part-of"] !== "qsearch") {
      err(t.id, "pod template lacks the label app.kubernetes.io/part-of: qsearch");
    }
    if (pod.serviceAccountName && !named("ServiceAccount", pod.serviceAccountName)) {
      err(t.id, `ServiceAccount ${pod.serviceAccountName} is not rendered`);
    }
    if (pod.automountServiceAccountToken !== false) {
      err(t.id, "mounts a service account token (automountServiceAccountToken: false: nothing calls the API)");
    }
    if (pod.hostNetwork || pod.hostPID || pod.hostIPC) err(t.id, "shares a host namespace");
    const volumes = new Map((pod.volumes ?? []).map((v) => [v.name, v]));
    for (const v of pod.volumes ?? []) {
      if (v.configMap && !configMaps.has(v.configMap.name)) {
        err(t.id, `volume ${v.name}: ConfigMap ${v.configMap.name} is not rendered`);
      }
      if (v.secret) secretHasKey(t.id, v.secret.secretName);
      if (v.persistentVolumeClaim && !named("PersistentVolumeClaim", v.persistentVolumeClaim.claimName)) {
        err(t.id, `volume ${v.name}: claim ${v.persistentVolumeClaim.claimName} is not rendered`);
      }
      if (v.hostPath) err(t.id, `volume ${v.name} is a hostPath`);
    }
    const claimTemplates = new Set((t.owner.spec.volumeClaimTemplates ?? []).map((c) => c.metadata.name));
    for (const c of allContainers(pod)) {
      const cid = `${t.id} container ${c.name}`;
      const sc = c.securityContext ?? {};
      const r = c.resources ?? {};
      for (const res of ["cpu", "memory"]) {
        const req = r.requests?.[res];
        const lim = r.limits?.[res];
        if (req === undefined) err(cid, `has no resources.requests.${res}`);
        if (lim === undefined) err(cid, `has no resources.limits.${res}`);
        if (req !== undefined && lim !== undefined && quantity(req) > quantity(lim)) {
          err(cid, `requests more ${res} (${req}) than its limit (${lim})`);
        }
      }
      if ((sc.runAsNonRoot ?? psc.runAsNonRoot) !== true) err(cid, "may run as root (runAsNonRoot)");
      if ((sc.runAsUser ?? psc.runAsUser) === 0) err(cid, "runs as uid 0");
      if (sc.allowPrivilegeEscalation !== false) err(cid, "allows privilege escalation");
      if (sc.privileged) err(cid, "is privileged");
      if (sc.readOnlyRootFilesystem !== true) err(cid, "has a writable root file system");
      if (!(sc.capabilities?.drop ?? []).includes("ALL")) err(cid, "does not drop ALL capabilities");
      if ((sc.capabilities?.add ?? []).length) err(cid, "adds capabilities");
      const seccomp = (sc.seccompProfile ?? psc.seccompProfile)?.type;
      if (seccomp !== "RuntimeDefault" && seccomp !== "Localhost") err(cid, "has no seccomp profile");
      if (!/(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$/.test(c.image ?? "") || /:latest$/.test(c.image)) {
        err(cid, `image ${c.image} has no pinned tag or digest`);
      }
      for (const m of c.volumeMounts ?? []) {
        if (!volumes.has(m.name) && !claimTemplates.has(m.name)) {
          err(cid, `mounts ${m.name}, which is not a volume of the pod`);
        }
      }
      const ports = c.ports ?? [];
      const portNumbers = new Set(ports.map((p) => p.containerPort));
      for (const kind of ["startupProbe", "readinessProbe", "livenessProbe"]) {
        const probe = c[kind];
        if (!probe) {
          if (kind !== "startupProbe" && ports.length) err(cid, `has no ${kind}`);
          continue;
        }
        for (const h of ["grpc", "httpGet", "tcpSocket"]) {
          if (!probe[h]) continue;
          if (typeof probe[h].port !== "number") {
            err(cid, `${kind}.${h}.port is ${JSON.stringify(probe[h].port)}: must be a number`);
          } else if (!portNumbers.has(probe[h].port)) {
            err(cid, `${kind}.${h}.port ${probe[h].port} is not one of the container's ports`);
          }
        }
      }
      // Dependent variables must be defined earlier in the list.
      const defined = new Set();
      for (const e of c.env ?? []) {
        for (const v of dependentVars(e.value ?? "")) {
          if (!defined.has(v)) err(cid, `env ${e.name} uses $(${v}) before it is defined`);
        }
        if (e.valueFrom?.secretKeyRef) {
          secretHasKey(cid, e.valueFrom.secretKeyRef.name, e.valueFrom.secretKeyRef.key);
        }
        if (e.valueFrom?.configMapKeyRef) {
          const cm = configMaps.get(e.valueFrom.configMapKeyRef.name);
          if (!cm?.data?.[e.valueFrom.configMapKeyRef.key]) {
            err(cid, `env ${e.name}: ConfigMap key ${e.valueFrom.configMapKeyRef.name}/${e.valueFrom.configMapKeyRef.key} is not rendered`);
          }
        }
        defined.add(e.name);
      }
      for (const a of [...(c.command ?? []), ...(c.args ?? [])]) {
        for (const v of dependentVars(a)) if (!defined.has(v)) err(cid, `args use $(${v}), which is not in env`);
      }
      for (const ef of c.envFrom ?? []) {
        if (ef.secretRef) secretHasKey(cid, ef.secretRef.name);
        if (ef.configMapRef && !configMaps.has(ef.configMapRef.name)) err(cid, `envFrom ConfigMap ${ef.configMapRef.name} is not rendered`);
      }
    }
  }

  // --- 3. qsearch processes ------------------------------------------------------------------
  const roles = { scheduler: [], worker: [] };
  for (const t of templates) {
    for (const c of t.spec.containers ?? []) {
      const role = qsearchRole(c);
      if (role) roles[role].push({ t, c });
    }
  }
  for (const role of ["scheduler", "worker"]) {
    if (roles[role].length !== 1) err(`qsearch ${role}`, `expected one container, found ${roles[role].length}`);
  }
  const settingsOf = new Map();
  for (const role of ["scheduler", "worker"]) {
    for (const { t, c } of roles[role]) {
      const cid = `${t.id} container ${c.name}`;
      const { settings: s, configKeys, file, problems } = effectiveSettings(t.spec, c, configMaps);
      settingsOf.set(role, { s, t, c });
      problems.forEach((p) => err(cid, p));
      for (const k of configKeys ?? []) {
        if (!STRING_SETTINGS.has(k) && !INT_SETTINGS[k]) {
          err(cid, `config file: unknown key '${k}' (the binary refuses to start)`);
        } else if (INT_SETTINGS[k]) {
          const [lo, hi] = INT_SETTINGS[k];
          if (!Number.isInteger(file[k]) || file[k] < lo || file[k] > hi) {
            err(cid, `config file: ${k} is ${file[k]}, outside ${lo}..${hi}`);
          }
        }
      }
      // Ports: what it listens on is what it declares and probes.
      const port = (addr) => Number(String(addr ?? "").split(":").pop());
      const ports = new Map((c.ports ?? []).map((p) => [p.name, p.containerPort]));
      const listenPort = port(s.listen);
      if (!String(s.listen).startsWith("0.0.0.0:")) err(cid, `listens on ${s.listen}: probes and Services cannot reach it`);
      if (!String(s["metrics-listen"]).startsWith("0.0.0.0:")) err(cid, `serves metrics on "${s["metrics-listen"]}": not reachable for scraping`);
      if (ports.get("metrics") !== port(s["metrics-listen"])) {
        err(cid, `port "metrics" is ${ports.get("metrics")} but metrics-listen is ${s["metrics-listen"]}`);
      }
      const want = role === "scheduler"
        ? { startupProbe: [""], readinessProbe: ["qsearch.v1.QuantSearch"], livenessProbe: [""] }
        : { startupProbe: [""], readinessProbe: [""], livenessProbe: [""] };
      for (const [kind, services] of Object.entries(want)) {
        const g = c[kind]?.grpc;
        if (!g) {
          err(cid, `${kind} is not a gRPC health probe`);
          continue;
        }
        if (g.port !== listenPort) err(cid, `${kind} probes port ${g.port}, but it listens on ${s.listen}`);
        if (!services.includes(g.service ?? "")) {
          err(cid, `${kind} asks for health service "${g.service}": the ${role} serves ${services.map((x) => `"${x}"`).join(" or ")} (others answer NOT_FOUND)`);
        }
      }
      // The shared blob directory.
      const blob = mountedFile(t.spec, c, s["blob-dir"] + "/x");
      if (!blob?.volume.persistentVolumeClaim) {
        err(cid, `blob-dir ${s["blob-dir"]} is not on a persistent volume claim`);
      } else {
        settingsOf.get(role).blobClaim = blob.volume.persistentVolumeClaim.claimName;
      }
      // Redis URLs: a Service here, with the password from the environment.
      for (const key of ["redis", "cache-redis"]) {
        const m = /^redis:\/\/(?::([^@]+)@)?([^:/]+):(\d+)\/(\d+)$/.exec(s[key] ?? "");
        if (!m) {
          err(cid, `${key} "${s[key]}" is not redis://[:PASSWORD@]host:port/db`);
          continue;
        }
        if (!m[1] || !/^\$\([A-Z_]+\)$/.test(m[1])) err(cid, `${key} has no password from a variable`);
        const svc = named("Service", m[2]);
        if (!svc) err(cid, `${key} host ${m[2]} is not a rendered Service`);
        else if (!(svc.spec.ports ?? []).some((p) => p.port === Number(m[3]))) err(cid, `${key}: Service ${m[2]} has no port ${m[3]}`);
        settingsOf.get(role)[key] = m[2];
      }
      if (role === "scheduler") {
        const d = t.owner;
        if (d.kind !== "Deployment" || d.spec.replicas !== 1) err(t.id, "the scheduler must run exactly one replica (job records have a single writer)");
        if (d.spec.strategy?.type !== "Recreate") err(t.id, "the scheduler must use strategy Recreate (never two at once)");
        if (!s["token-file"]) {
          err(cid, "has no token-file: the API would accept any caller");
        } else {
          const tok = mountedFile(t.spec, c, s["token-file"]);
          if (!tok?.volume.secret) err(cid, `token-file ${s["token-file"]} is not in a mounted Secret`);
          else if (secrets.has(tok.volume.secret.secretName)) secretHasKey(cid, tok.volume.secret.secretName, tok.key);
        }
      } else {
        const grace = t.spec.terminationGracePeriodSeconds ?? 30;
        if (grace < s["drain-seconds"] + 5) {
          err(t.id, `terminationGracePeriodSeconds ${grace} leaves no time after drain-seconds ${s["drain-seconds"]} to hand tasks back and exit (want >= drain + 5)`);
        }
        if (!c.startupProbe) err(cid, "has no startupProbe (LibTorch loads slowly)");
      }
      if (!(c.volumeMounts ?? []).some((m) => m.mountPath === "/tmp")) err(cid, "has a read-only root but no writable /tmp");
    }
  }
  const sch = settingsOf.get("scheduler");
  const wrk = settingsOf.get("worker");
  if (sch && wrk) {
    if (sch.blobClaim !== wrk.blobClaim) err("qsearch", `scheduler and worker blob claims differ (${sch.blobClaim}, ${wrk.blobClaim})`);
    for (const key of ["redis", "cache-redis"]) {
      if (sch[key] !== wrk[key]) err("qsearch", `scheduler and worker use different ${key} hosts (${sch[key]}, ${wrk[key]})`);
    }
    const claim = named("PersistentVolumeClaim", sch.blobClaim);
    if (claim && P.gpu && !claim.spec.accessModes.includes("ReadWriteMany")) {
      err(claim, "the blob store must be ReadWriteMany (scheduler and workers on different nodes)");
    }
  }

  // --- 4. Services, StatefulSets, PDBs ---------------------------------------------------------
  for (const svc of services) {
    const matched = templates.filter((t) => mapSelectorMatches(svc.spec.selector, t.labels));
    if (matched.length === 0) {
      err(svc, "selects no pod template");
      continue;
    }
    for (const p of svc.spec.ports ?? []) {
      const target = p.targetPort ?? p.port;
      const ok = matched.some((t) => (t.spec.containers ?? []).some((c) => (c.ports ?? []).some(
        (cp) => (typeof target === "string" ? cp.name === target : cp.containerPort === target))));
      if (!ok) err(svc, `port ${p.name}: targetPort ${target} is no container port of the pods it selects`);
    }
  }
  for (const ss of byKind("StatefulSet")) {
    const gov = named("Service", ss.spec.serviceName);
    if (!gov) err(ss, `serviceName ${ss.spec.serviceName} is not a rendered Service`);
    else if (gov.spec.clusterIP !== "None") err(ss, `serviceName ${ss.spec.serviceName} is not headless`);
  }
  const scaled = new Set(byKind("ScaledObject").map((so) => so.spec.scaleTargetRef?.name));
  for (const pdb of byKind("PodDisruptionBudget")) {
    const matched = templates.filter((t) => selectorMatches(pdb.spec.selector, t.labels));
    if (matched.length === 0) err(pdb, "selects no pod template");
    for (const t of matched) {
      const replicas = scaled.has(t.owner.metadata.name) ? undefined : (t.owner.spec.replicas ?? 1);
      const min = pdb.spec.minAvailable;
      if (replicas === 1 && (min === 1 || min === "100%" || pdb.spec.maxUnavailable === 0)) {
        err(pdb, `${t.id} has one replica: this budget would block every node drain`);
      }
    }
  }

  // --- 5. NetworkPolicies ----------------------------------------------------------------------
  const policies = byKind("NetworkPolicy");
  const selects = (np, t) => selectorMatches(np.spec.podSelector, t.labels)
    || (Object.keys(np.spec.podSelector ?? {}).length === 0);
  if (!policies.some((np) => Object.keys(np.spec.podSelector ?? {}).length === 0
      && (np.spec.policyTypes ?? []).includes("Ingress") && !(np.spec.ingress ?? []).length)) {
    err("NetworkPolicy", "no default deny of ingress (podSelector {} with no ingress rules)");
  }
  const isRedis = (t) => t.labels["app.kubernetes.io/name"] === "redis";
  const isQsearch = (t) => t.labels["app.kubernetes.io/name"] === "qsearch";
  const schedulerT = roles.scheduler[0]?.t;
  for (const np of policies) {
    const targets = templates.filter((t) => selects(np, t));
    for (const rule of np.spec.ingress ?? []) {
      const from = rule.from ?? [];
      if (from.length === 0) {
        // Open to everyone: only the scheduler's API port.
        const ports = (rule.ports ?? []).map((p) => p.port);
        if (!(targets.length === 1 && targets[0] === schedulerT && ports.length === 1
              && ports[0] === 50051)) {
          err(np, "admits traffic from anywhere to something other than the scheduler's gRPC port");
        }
      }
      for (const peer of from) {
        if (peer.ipBlock) err(np, "uses an ipBlock peer");
        if (targets.some(isRedis)) {
          if (peer.podSelector && !peer.namespaceSelector) {
            const peers = templates.filter((t) => selectorMatches(peer.podSelector, t.labels));
            const bad = peers.filter((t) => !roles.scheduler.concat(roles.worker).some((r) => r.t === t));
            if (bad.length) err(np, `lets ${bad.map((t) => t.id).join(", ")} reach Redis`);
          } else if (peer.namespaceSelector) {
            const ns = peer.namespaceSelector.matchLabels?.["kubernetes.io/metadata.name"];
            if (!(P.keda && ns === "keda" && targets.every((t) => t.labels["app.kubernetes.io/component"] === "queue"))) {
              err(np, `lets namespace ${ns ?? "(any)"} reach Redis`);
            }
          }
        }
      }
    }
  }
  for (const t of templates.filter(isRedis)) {
    const guarding = policies.filter((np) => selects(np, t) && (np.spec.ingress ?? []).length);
    const fromQsearch = guarding.some((np) => np.spec.ingress.some((r) => (r.from ?? []).some(
      (peer) => peer.podSelector && roles.scheduler.concat(roles.worker)
        .every((q) => selectorMatches(peer.podSelector, q.t.labels)))));
    if (!fromQsearch) err(t.id, "no NetworkPolicy lets the scheduler and the workers reach it");
  }
  for (const t of templates.filter(isQsearch)) {
    const scrape = policies.some((np) => selects(np, t) && (np.spec.ingress ?? []).some(
      (r) => (r.ports ?? []).some((p) => p.port === 9464 || p.port === "metrics")
        && (r.from ?? []).some((peer) => peer.namespaceSelector)));
    if (!scrape) err(t.id, "no NetworkPolicy lets Prometheus scrape its metrics port");
  }

  // --- 6. Redis --------------------------------------------------------------------------------
  const redisSets = byKind("StatefulSet").filter((s) => s.spec.template.metadata?.labels?.["app.kubernetes.io/name"] === "redis");
  for (const ss of redisSets) {
    const role = ss.spec.template.metadata.labels["app.kubernetes.io/component"];
    const pod = ss.spec.template.spec;
    const c = pod.containers[0];
    const major = /^redis:(\d+)/.exec(c.image)?.[1];
    if (major !== "7") err(ss, `image ${c.image}: Redis 7 is needed (KEDA lagCount, XAUTOCLAIM replies)`);
    const confFile = mountedFile(pod, c, "/etc/redis/redis.conf");
    const text = confFile?.volume.configMap && configMaps.get(confFile.volume.configMap.name)?.data?.["redis.conf"];
    if (!text || ![...(c.command ?? []), ...(c.args ?? [])].join(" ").includes("/etc/redis/redis.conf")) {
      err(ss, "does not run redis-server on a mounted /etc/redis/redis.conf");
      continue;
    }
    const conf = redisConf(text);
    const limit = quantity(c.resources?.limits?.memory);
    const maxmem = redisBytes(conf.maxmemory?.[0] ?? "0");
    if (!(maxmem > 0 && maxmem < limit)) {
      err(ss, `maxmemory ${conf.maxmemory?.[0]} must be set and below the memory limit ${c.resources?.limits?.memory} (or Redis is OOM-killed instead of refusing writes)`);
    }
    for (const inc of conf.include) {
      if (!mountedFile(pod, c, inc)) err(ss, `includes ${inc}, which is on no mounted volume`);
    }
    if (!conf.include.some((f) => /auth/.test(f)) && !conf.requirepass) err(ss, "has no password");
    const dataDir = conf.dir?.[0] ?? "/data";
    const dataMount = (c.volumeMounts ?? []).find((m) => m.mountPath === dataDir);
    const persisted = dataMount && (ss.spec.volumeClaimTemplates ?? []).some((v) => v.metadata.name === dataMount.name);
    if (!c.readinessProbe?.exec) err(ss, "has no readiness probe that asks Redis itself");
    else if (!c.readinessProbe.exec.command.join(" ").includes("REDIS_PASSWORD")) err(ss, "its readiness probe does not authenticate");
    if (role === "queue") {
      if (conf.appendonly?.[0] !== "yes") err(ss, "the queue must run appendonly yes");
      if (conf["maxmemory-policy"]?.[0] !== "noeviction") err(ss, "the queue must run maxmemory-policy noeviction");
      if (!persisted) err(ss, `the queue's data directory ${dataDir} is not on a volumeClaimTemplate`);
    } else if (role === "cache") {
      if (conf["maxmemory-policy"]?.[0] !== "allkeys-lru") err(ss, "the cache must run maxmemory-policy allkeys-lru");
      if (conf.appendonly?.[0] !== "no" || (conf.save ?? [""])[0] !== "") err(ss, "the cache must not persist (save \"\", appendonly no)");
      if ((ss.spec.volumeClaimTemplates ?? []).length) err(ss, "the cache has a persistent volume it never uses");
    } else {
      err(ss, `unknown Redis role ${role}`);
    }
  }
  const hasCache = docs.some((d) => /^redis-cache/.test(d.metadata.name));
  if (P.redisCache !== hasCache) err("profile", P.redisCache ? "redis-cache is missing" : `redis-cache objects are rendered (${docs.filter((d) => /^redis-cache/.test(d.metadata.name)).map(idOf).join(", ")})`);
  if (!redisSets.some((s) => s.spec.template.metadata.labels["app.kubernetes.io/component"] === "queue")) err("profile", "redis-queue is missing");
  if (sch) {
    const want = P.redisCache ? "redis-cache" : "redis-queue";
    if (sch["cache-redis"] !== want) err("qsearch", `cache-redis points at ${sch["cache-redis"]}, expected ${want}`);
    if (sch.redis !== "redis-queue") err("qsearch", `redis points at ${sch.redis}, expected redis-queue`);
  }

  // --- 7. KEDA -----------------------------------------------------------------------------------
  const scaledObjects = byKind("ScaledObject");
  if (P.keda !== (scaledObjects.length > 0)) err("profile", P.keda ? "no ScaledObject" : "a ScaledObject is rendered");
  for (const so of scaledObjects) {
    const target = named("Deployment", so.spec.scaleTargetRef?.name);
    if (!target) {
      err(so, `scales ${so.spec.scaleTargetRef?.name}, which is not a rendered Deployment`);
    } else {
      if (target.spec.replicas !== undefined) err(so, `${target.metadata.name} still sets replicas; the HPA owns the count`);
      if (!roles.worker.some((w) => w.t.owner === target)) err(so, "does not scale the workers");
    }
    if (so.spec.minReplicaCount !== 0) err(so, "minReplicaCount must be 0 (idle workers cost a node)");
    if (!(so.spec.maxReplicaCount >= 1)) err(so, "maxReplicaCount must be at least 1");
    if (!(so.spec.cooldownPeriod >= 300)) err(so, "cooldownPeriod below 300 s");
    if (so.spec.advanced?.horizontalPodAutoscalerConfig?.behavior?.scaleDown?.stabilizationWindowSeconds === undefined) {
      err(so, "no scale-down stabilization window");
    }
    const triggers = so.spec.triggers ?? [];
    const modes = [];
    for (const tr of triggers) {
      const m = tr.metadata ?? {};
      if (tr.type !== "redis-streams") {
        err(so, `trigger type ${tr.type}`);
        continue;
      }
      if (m.stream !== "qs:v1:tasks" || m.consumerGroup !== "workers") err(so, `trigger reads ${m.stream}/${m.consumerGroup}, not qs:v1:tasks/workers`);
      const addr = /^([a-z0-9-]+)\.([a-z0-9-]+)\.svc(\.[a-z.]+)?:(\d+)$/.exec(m.address ?? "");
      if (!addr) err(so, `trigger address ${m.address} is not SERVICE.NAMESPACE.svc:PORT (KEDA runs in its own namespace)`);
      else if (addr[2] !== NAMESPACE || !named("Service", addr[1])) err(so, `trigger address ${m.address} names no rendered Service`);
      else if (addr[1] !== sch?.redis) err(so, `trigger address ${m.address} is not the queue Redis (${sch?.redis})`);
      const auth = named("TriggerAuthentication", tr.authenticationRef?.name);
      if (!auth) err(so, `trigger authenticationRef ${tr.authenticationRef?.name} is not rendered`);
      if ("lagCount" in m) {
        modes.push("lag");
        if (m.activationLagCount !== "0") err(so, "the lagCount trigger needs activationLagCount \"0\" to wake workers from zero");
      }
      if ("pendingEntriesCount" in m) modes.push("pending");
      if ("streamLength" in m) err(so, "streamLength counts acknowledged entries too: use lagCount");
    }
    if (!(modes.includes("lag") && modes.includes("pending"))) {
      err(so, "needs a lagCount trigger (wakes from zero) and a pendingEntriesCount trigger (keeps workers while tasks run)");
    }
  }
  for (const ta of byKind("TriggerAuthentication")) {
    for (const ref of ta.spec.secretTargetRef ?? []) secretHasKey(ta, ref.name, ref.key);
    if (!(ta.spec.secretTargetRef ?? []).some((r) => r.parameter === "password")) err(ta, "passes no password");
  }
  if (P.keda && !policies.some((np) => (np.spec.ingress ?? []).some((r) => (r.from ?? []).some(
    (p) => p.namespaceSelector?.matchLabels?.["kubernetes.io/metadata.name"] === "keda")))) {
    err("NetworkPolicy", "the KEDA operator cannot reach redis-queue");
  }

  // --- 8. monitoring -----------------------------------------------------------------------------
  const monitors = byKind("ServiceMonitor");
  const rules = byKind("PrometheusRule");
  if (P.monitoring !== (monitors.length > 0 && rules.length > 0)) {
    err("profile", P.monitoring ? "ServiceMonitors or the PrometheusRule are missing" : "prometheus-operator objects are rendered");
  }
  const jobs = new Set();
  for (const sm of monitors) {
    const matched = services.filter((s) => selectorMatches(sm.spec.selector, s.metadata.labels ?? {}));
    if (matched.length !== 1) err(sm, `selects ${matched.length} Services, expected 1`);
    for (const svc of matched) {
      jobs.add(sm.spec.jobLabel ? svc.metadata.labels?.[sm.spec.jobLabel] : svc.metadata.name);
      for (const ep of sm.spec.endpoints ?? []) {
        if (!(svc.spec.ports ?? []).some((p) => p.name === ep.port)) err(sm, `endpoint port ${ep.port} is not a port of Service ${svc.metadata.name}`);
      }
    }
  }
  for (const pr of rules) {
    for (const g of pr.spec.groups ?? []) {
      for (const r of g.rules ?? []) {
        for (const m of String(r.expr).matchAll(/\bjob\s*(=~|=)\s*"([^"]*)"/g)) {
          const names = m[1] === "=" ? [m[2]] : m[2].split("|");
          for (const n of names) {
            if (!jobs.has(n)) err(pr, `${r.alert ?? r.record} matches job "${n}", which no ServiceMonitor produces (jobs: ${[...jobs].join(", ")})`);
          }
        }
        if (r.alert && !(r.labels?.severity && r.annotations?.summary && r.annotations?.description)) {
          err(pr, `${r.alert} lacks a severity label, a summary or a description`);
        }
      }
    }
  }
  const board = configMaps.get("qsearch-dashboard");
  if (!board) {
    err("ConfigMap/qsearch-dashboard", "the Grafana dashboard is not rendered");
  } else {
    if (board.metadata.labels?.grafana_dashboard !== "1") err(board, "lacks the label grafana_dashboard: \"1\"");
    const file = fs.readFileSync(path.join(REPO, "deploy/base/grafana/qsearch.json"), "utf8");
    if (board.data?.["qsearch.json"] !== file) err(board, "qsearch.json differs from deploy/base/grafana/qsearch.json");
  }

  // --- 9. secrets and GPUs by profile ---------------------------------------------------------
  for (const name of SECRETS) {
    const rendered = [...secrets.keys()].some((n) => n === name || n.startsWith(name + "-"));
    if (P.secrets === "external" && rendered) err("profile", `Secret ${name} is rendered: real credentials must not live in the repository`);
    if (P.secrets === "rendered" && !rendered) err("profile", `Secret ${name} is not rendered`);
  }
  for (const t of templates) {
    for (const c of t.spec.containers ?? []) {
      const lim = c.resources?.limits?.["nvidia.com/gpu"];
      const req = c.resources?.requests?.["nvidia.com/gpu"];
      const isWorker = roles.worker.some((w) => w.c === c);
      if (req !== undefined && req !== lim) err(`${t.id} container ${c.name}`, "a GPU request must equal its limit");
      if (lim !== undefined && !(P.gpu && isWorker)) err(`${t.id} container ${c.name}`, "asks for a GPU");
    }
  }
  if (P.gpu) {
    for (const { t, c } of roles.worker) {
      const lim = c.resources?.limits?.["nvidia.com/gpu"];
      if (!(Number.isInteger(Number(lim)) && Number(lim) >= 1)) err(t.id, "the GPU worker has no nvidia.com/gpu limit");
      if (!(t.spec.tolerations ?? []).some((tol) => tol.key === "nvidia.com/gpu" && tol.operator === "Exists" && tol.effect === "NoSchedule")) {
        err(t.id, "the GPU worker lacks the toleration nvidia.com/gpu Exists NoSchedule");
      }
      if (!Object.keys(t.spec.nodeSelector ?? {}).length) err(t.id, "the GPU worker has no nodeSelector");
      if (c.image === roles.scheduler[0]?.c.image) err(t.id, `the GPU worker runs the CPU image ${c.image}`);
    }
  }
  return errors;
}

// --- command line -------------------------------------------------------------------------------

export function loadDocs(text) {
  const docs = [];
  for (const d of parseAllDocuments(text)) {
    if (d.errors.length) throw new Error(`YAML: ${d.errors[0].message}`);
    const js = d.toJS();
    if (js !== null && js !== undefined) docs.push(js);
  }
  return docs;
}

// Ways to break a rendered gpu overlay, each with what the report must say.
const MUTATIONS = [
  ["an unknown kind", (ds) => ds.push({ apiVersion: "example.com/v1", kind: "Frobnicator", metadata: { name: "x", namespace: "qsearch" } }), /unknown kind/],
  ["a misspelt field", (ds) => { dep(ds, "qsearch-worker").spec.template.spec.terminationGracePeriod = 30; }, /unknown field .*terminationGracePeriod\b/],
  ["a probe port given by name", (ds) => { ctr(ds, "qsearch-scheduler").readinessProbe.grpc.port = "grpc"; }, /schema: .*port/],
  ["a container without limits", (ds) => { delete ctr(ds, "qsearch-worker").resources.limits.memory; }, /no resources.limits.memory/],
  ["a root container", (ds) => { dep(ds, "qsearch-scheduler").spec.template.spec.securityContext.runAsNonRoot = false; }, /may run as root/],
  ["a writable root", (ds) => { ctr(ds, "redis-queue").securityContext.readOnlyRootFilesystem = false; }, /writable root/],
  ["an unpinned image", (ds) => { ctr(ds, "redis-cache").image = "redis"; }, /no pinned tag/],
  ["an unknown health service", (ds) => { ctr(ds, "qsearch-worker").livenessProbe.grpc.service = "liveness"; }, /health service "liveness"/],
  ["the scheduler probed on the wrong service", (ds) => { ctr(ds, "qsearch-scheduler").readinessProbe.grpc.service = ""; }, /readinessProbe asks for health service ""/],
  ["a short worker grace period", (ds) => { dep(ds, "qsearch-worker").spec.template.spec.terminationGracePeriodSeconds = 20; }, /terminationGracePeriodSeconds 20/],
  ["a drain longer than the grace period", (ds) => { ctr(ds, "qsearch-worker").env.push({ name: "QSEARCH_DRAIN_SECONDS", value: "60" }); }, /drain-seconds 60/],
  ["an unknown config key", (ds) => { cfg(ds).data["config.yaml"] += "\nqueue-name: tasks\n"; }, /unknown key 'queue-name'/],
  ["a config value out of range", (ds) => { cfg(ds).data["config.yaml"] = cfg(ds).data["config.yaml"].replace(/^max-attempts: .*$/m, "max-attempts: 0"); }, /max-attempts is 0/],
  ["two schedulers", (ds) => { dep(ds, "qsearch-scheduler").spec.replicas = 2; }, /exactly one replica/],
  ["a rolling scheduler", (ds) => { dep(ds, "qsearch-scheduler").spec.strategy = { type: "RollingUpdate" }; }, /Recreate/],
  ["a password defined after its use", (ds) => { const e = ctr(ds, "qsearch-worker").env; e.push(...e.splice(e.findIndex((x) => x.name === "REDIS_PASSWORD"), 1)); }, /before it is defined/],
  ["a Service selecting nothing", (ds) => { obj(ds, "Service", "qsearch-scheduler").spec.selector["app.kubernetes.io/component"] = "api"; }, /selects no pod template/],
  ["a Service port to nowhere", (ds) => { obj(ds, "Service", "qsearch-worker").spec.ports[0].targetPort = "prometheus"; }, /targetPort prometheus/],
  ["a missing Secret", (ds) => { ctr(ds, "qsearch-worker").env.find((x) => x.name === "REDIS_PASSWORD").valueFrom.secretKeyRef.name = "redis-pw"; }, /Secret redis-pw/],
  ["a minAvailable 1 budget on one scheduler", (ds) => { const p = obj(ds, "PodDisruptionBudget", "qsearch-scheduler"); delete p.spec.maxUnavailable; p.spec.minAvailable = 1; }, /block every node drain/],
  ["Redis open to every pod", (ds) => { obj(ds, "NetworkPolicy", "redis-from-qsearch").spec.ingress[0].from = [{ podSelector: {} }]; }, /reach Redis/],
  ["no Redis policy", (ds) => { drop(ds, "NetworkPolicy", "redis-from-qsearch"); }, /no NetworkPolicy lets the scheduler and the workers reach it/],
  ["no default deny", (ds) => { drop(ds, "NetworkPolicy", "default-deny-ingress"); }, /no default deny/],
  ["metrics open to all", (ds) => { delete obj(ds, "NetworkPolicy", "qsearch-metrics-from-monitoring").spec.ingress[0].from; }, /from anywhere/],
  ["an evicting queue", (ds) => { const c = conf(ds, "redis-queue-conf"); c.data["redis.conf"] = c.data["redis.conf"].replace("noeviction", "allkeys-lru"); }, /noeviction/],
  ["a queue without AOF", (ds) => { const c = conf(ds, "redis-queue-conf"); c.data["redis.conf"] = c.data["redis.conf"].replace("appendonly yes", "appendonly no"); }, /appendonly yes/],
  ["a persisting cache", (ds) => { const c = conf(ds, "redis-cache-conf"); c.data["redis.conf"] = c.data["redis.conf"].replace("appendonly no", "appendonly yes"); }, /must not persist/],
  ["maxmemory over the limit", (ds) => { ctr(ds, "redis-cache").resources.limits.memory = "1Gi"; ctr(ds, "redis-cache").resources.requests.memory = "1Gi"; }, /maxmemory 2gb/],
  ["a cache URL at the queue", (ds) => { for (const n of ["qsearch-scheduler", "qsearch-worker"]) ctr(ds, n).env.find((e) => e.name === "QSEARCH_CACHE_REDIS").value = "redis://:$(REDIS_PASSWORD)@redis-queue:6379/0"; }, /cache-redis points at redis-queue/],
  ["no GPU limit", (ds) => { delete ctr(ds, "qsearch-worker").resources.limits["nvidia.com/gpu"]; }, /no nvidia.com\/gpu limit/],
  ["no GPU toleration", (ds) => { delete dep(ds, "qsearch-worker").spec.template.spec.tolerations; }, /toleration/],
  ["a GPU scheduler", (ds) => { ctr(ds, "qsearch-scheduler").resources.limits["nvidia.com/gpu"] = 1; }, /asks for a GPU/],
  ["no lag trigger", (ds) => { const so = obj(ds, "ScaledObject", "qsearch-worker"); so.spec.triggers = so.spec.triggers.filter((t) => !("lagCount" in t.metadata)); }, /lagCount trigger/],
  ["no activation at zero", (ds) => { delete obj(ds, "ScaledObject", "qsearch-worker").spec.triggers[0].metadata.activationLagCount; }, /activationLagCount/],
  ["workers kept warm", (ds) => { obj(ds, "ScaledObject", "qsearch-worker").spec.minReplicaCount = 1; }, /minReplicaCount must be 0/],
  ["replicas fighting the HPA", (ds) => { dep(ds, "qsearch-worker").spec.replicas = 2; }, /still sets replicas/],
  ["a ServiceMonitor on a wrong port", (ds) => { obj(ds, "ServiceMonitor", "qsearch-worker").spec.endpoints[0].port = "http"; }, /endpoint port http/],
  ["an alert on a job nobody scrapes", (ds) => { obj(ds, "PrometheusRule", "qsearch-alerts").spec.groups[0].rules[0].expr += ' or up{job="workers"} == 0'; }, /job "workers"/],
  ["a committed Secret", (ds) => ds.push({ apiVersion: "v1", kind: "Secret", metadata: { name: "qsearch-redis", namespace: "qsearch" }, data: { password: "eA==" } }), /must not live in the repository/],
  ["an object outside the namespace", (ds) => { delete obj(ds, "ConfigMap", "qsearch-dashboard").metadata.namespace; }, /namespace \(none\)/],
];
function obj(ds, kind, name) {
  const d = ds.find((x) => x.kind === kind && (x.metadata.name === name || x.metadata.name.startsWith(name + "-")));
  if (!d) throw new Error(`self-test: no ${kind}/${name} in the rendering`);
  return d;
}
const dep = (ds, name) => ds.find((x) => ["Deployment", "StatefulSet"].includes(x.kind) && x.metadata.name === name);
const ctr = (ds, name) => dep(ds, name).spec.template.spec.containers[0];
const cfg = (ds) => obj(ds, "ConfigMap", "qsearch-config");
const conf = (ds, name) => obj(ds, "ConfigMap", name);
const drop = (ds, kind, name) => ds.splice(ds.indexOf(obj(ds, kind, name)), 1);

async function selfTest(text, externalSecrets) {
  const baseline = await validate(loadDocs(text), { profile: "gpu", externalSecrets });
  if (baseline.length) {
    console.error("self-test: the unbroken rendering already fails:\n  " + baseline.join("\n  "));
    return 1;
  }
  let failed = 0;
  for (const [what, mutate, want] of MUTATIONS) {
    const docs = loadDocs(text);
    let errors;
    try {
      mutate(docs);
      errors = await validate(docs, { profile: "gpu", externalSecrets });
    } catch (e) {
      errors = [`(the mutation or the validation threw: ${e.message})`];
    }
    if (!errors.some((e) => want.test(e))) {
      failed++;
      console.error(`self-test: ${what}: not reported as ${want}; got:\n    ${errors.join("\n    ") || "(nothing)"}`);
    }
  }
  console.log(`validate.mjs self-test: ${MUTATIONS.length - failed} of ${MUTATIONS.length} deliberate breakages caught`);
  return failed ? 1 : 0;
}

async function main(argv) {
  let profile = null;
  let externalSecrets = [];
  let self = false;
  let file = "-";
  argv = argv.flatMap((a) => (/^--[\w-]+=/.test(a) ? [a.slice(0, a.indexOf("=")), a.slice(a.indexOf("=") + 1)] : [a]));
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === "--profile") profile = argv[++i];
    else if (argv[i] === "--external-secrets") externalSecrets = argv[++i].split(",").filter(Boolean);
    else if (argv[i] === "--self-test") self = true;
    else if (argv[i].startsWith("-") && argv[i] !== "-") throw new Error(`unknown option ${argv[i]}`);
    else file = argv[i];
  }
  const text = fs.readFileSync(file === "-" ? 0 : file, "utf8");
  if (self) return selfTest(text, externalSecrets);
  if (!profile) throw new Error("--profile is required");
  const docs = loadDocs(text);
  const errors = await validate(docs, { profile, externalSecrets });
  for (const e of errors) console.error(`  ${e}`);
  const kinds = {};
  for (const d of docs) kinds[d.kind] = (kinds[d.kind] ?? 0) + 1;
  const summary = Object.entries(kinds).sort().map(([k, n]) => `${n} ${k}`).join(", ");
  console.log(`${profile}: ${docs.length} objects (${summary}): ${errors.length ? errors.length + " problem(s)" : "valid"}`);
  return errors.length ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main(process.argv.slice(2)).then((code) => process.exit(code), (e) => {
    console.error(`validate.mjs: ${e.message}`);
    process.exit(2);
  });
}
