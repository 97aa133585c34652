// Helpers over rendered Kubernetes objects: schema lookup, label selectors, quantities, pod
// templates, and the effective qsearch settings of a container.

import { parse as parseYaml } from "yaml";

// --- schemas ---------------------------------------------------------------------------------

const classCache = new Map();

// The kubernetes-models class for apiVersion/kind, or null when none of the three packages has
// it (an unknown kind: the caller reports it).
export async function modelClass(apiVersion, kind) {
  const key = apiVersion + "/" + kind;
  if (classCache.has(key)) return classCache.get(key);
  let cls = null;
  if (/^[A-Z][A-Za-z0-9]*$/.test(kind) && /^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion)) {
    const [group, version] = apiVersion.includes("/") ? apiVersion.split("/") : ["", apiVersion];
    let spec;
    if (group === "keda.sh" || group === "eventing.keda.sh") {
      spec = `@kubernetes-models/keda/${group}/${version}/${kind}`;
    } else if (group === "monitoring.coreos.com") {
      spec = `@kubernetes-models/prometheus-operator/${group}/${version}/${kind}`;
    } else {
      spec = `kubernetes-models/${group ? group + "/" : ""}${version}/${kind}`;
    }
    try {
      const mod = await import(spec);
      cls = mod[kind] ?? null;
    } catch (e) {
      if (!["ERR_MODULE_NOT_FOUND", "ERR_PACKAGE_PATH_NOT_EXPORTED"].includes(e.code)) throw e;
    }
  }
  classCache.set(key, cls);
  return cls;
}

// Field names the schema does not know. The models' validators are compiled JSON schemas that
// allow extra properties, so a misspelt field (terminationGracePeriod) would pass. They do read
// every property their schema names, though, so validating through a Proxy that records reads
// shows which keys no schema looked at. Objects whose keys were enumerated (maps: labels, data,
// additionalProperties) or that the validator never looked into (free-form) are skipped.
export function unknownFields(cls, doc) {
  const records = [];
  const wrap = (obj, path) => {
    if (obj === null || typeof obj !== "object") return obj;
    const rec = { path, obj, read: new Set(), enumerated: false };
    records.push(rec);
    const children = new Map();
    return new Proxy(obj, {
      get(target, key, receiver) {
        if (typeof key === "string") rec.read.add(key);
        const value = Reflect.get(target, key, receiver);
        if (typeof key !== "string" || value === null || typeof value !== "object") return value;
        if (!children.has(key)) children.set(key, wrap(value, `${path}/${key}`));
        return children.get(key);
      },
      has(target, key) {
        if (typeof key === "string") rec.read.add(key);
        return Reflect.has(target, key);
      },
      ownKeys(target) {
        rec.enumerated = true;
        return Reflect.ownKeys(target);
      },
    });
  };
  try {
    cls.prototype.validate.call(wrap(structuredClone(doc), ""));
  } catch {
    return []; // schema errors are reported by the plain validation
  }
  const unknown = [];
  for (const r of records) {
    if (Array.isArray(r.obj) || r.enumerated || r.read.size === 0) continue;
    for (const key of Object.keys(r.obj)) if (!r.read.has(key)) unknown.push(`${r.path}/${key}`);
  }
  return unknown;
}

// --- labels and selectors --------------------------------------------------------------------

export function selectorMatches(selector, labels = {}) {
  if (!selector) return false;
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) {
    if (labels[k] !== v) return false;
  }
  for (const e of selector.matchExpressions ?? []) {
    const has = Object.prototype.hasOwnProperty.call(labels, e.key);
    switch (e.operator) {
      case "In": if (!has || !e.values.includes(labels[e.key])) return false; break;
      case "NotIn": if (has && e.values.includes(labels[e.key])) return false; break;
      case "Exists": if (!has) return false; break;
      case "DoesNotExist": if (has) return false; break;
      default: return false;
    }
  }
  return true;
}

// A Service's selector is a plain map.
export function mapSelectorMatches(map, labels = {}) {
  if (!map || Object.keys(map).length === 0) return false;
  return Object.entries(map).every(([k, v]) => labels[k] === v);
}

// --- quantities ------------------------------------------------------------------------------

const SUFFIX = {
  "": 1, m: 1e-3, k: 1e3, M: 1e6, G: 1e9, T: 1e12,
  Ki: 2 ** 10, Mi: 2 ** 20, Gi: 2 ** 30, Ti: 2 ** 40,
};

export function quantity(q) {
  if (typeof q === "number") return q;
  const m = /^([0-9.]+)(m|k|M|G|T|Ki|Mi|Gi|Ti)?$/.exec(String(q));
  if (!m) return NaN;
  return parseFloat(m[1]) * SUFFIX[m[2] ?? ""];
}

// Redis' memory units: 1gb = 1024^3, 1g = 10^9.
export function redisBytes(v) {
  const m = /^([0-9]+)(b|k|kb|m|mb|g|gb)?$/i.exec(String(v).trim());
  if (!m) return NaN;
  const unit = (m[2] ?? "b").toLowerCase();
  const mult = { b: 1, k: 1e3, kb: 1024, m: 1e6, mb: 1024 ** 2, g: 1e9, gb: 1024 ** 3 }[unit];
  return parseInt(m[1], 10) * mult;
}

// redis.conf as {directive: [args]} (last one wins; `include` collects all).
export function redisConf(text) {
  const conf = { include: [] };
  for (const raw of text.split("\n")) {
    const line = raw.trim();
    if (!line || line.startsWith("#")) continue;
    const [key, ...args] = line.match(/"[^"]*"|\S+/g);
    const values = args.map((a) => a.replace(/^"(.*)"$/, "$1"));
    if (key.toLowerCase() === "include") conf.include.push(values[0]);
    else conf[key.toLowerCase()] = values;
  }
  return conf;
}

// --- workloads -------------------------------------------------------------------------------

export const WORKLOAD_KINDS = new Set(["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"]);

export function podTemplates(docs) {
  return docs
    .filter((d) => WORKLOAD_KINDS.has(d.kind) && d.spec?.template)
    .map((d) => ({
      owner: d,
      id: `${d.kind}/${d.metadata.name}`,
      labels: d.spec.template.metadata?.labels ?? {},
      spec: d.spec.template.spec ?? {},
    }));
}

export function allContainers(podSpec) {
  return [...(podSpec.initContainers ?? []), ...(podSpec.containers ?? [])];
}

// --- qsearch settings ------------------------------------------------------------------------

// The flags the YAML config file accepts (server/service_commands.cc: the string settings and
// kIntSettings), with the integer ranges. An unknown key stops the binary at start.
export const STRING_SETTINGS = new Set([
  "listen", "metrics-listen", "redis", "cache-redis", "blob-dir", "token-file", "tls-cert",
  "tls-key", "tls-ca", "server",
]);
export const INT_SETTINGS = {
  "lease-seconds": [1, 86400, 60],
  "max-attempts": [1, 100, 3],
  "max-running": [1, 1000, 4],
  "dispatch-window": [1, 100000, 16],
  "job-deadline": [60, 30 * 24 * 3600, 86400],
  "max-active-jobs": [1, 1000000, 1000],
  "worker-threads": [0, 256, 0],
  "drain-seconds": [0, 3600, 20],
};
export const STRING_DEFAULTS = {
  listen: "127.0.0.1:50051",
  "metrics-listen": "",
  redis: "redis://127.0.0.1:6379/0",
  "cache-redis": "",
  "blob-dir": "qsearch-blobs",
  "token-file": "",
};

export function envName(key) {
  return "QSEARCH_" + key.toUpperCase().replace(/-/g, "_");
}

// The qsearch role of a container ("scheduler", "worker") from its arguments, or null.
export function qsearchRole(container) {
  const argv = [...(container.command ?? []), ...(container.args ?? [])];
  const i = argv.findIndex((a) => a === "scheduler" || a === "worker");
  if (i < 0 || !/qsearch/.test(container.image ?? "")) return null;
  return argv[i];
}

function flagValue(argv, key) {
  for (let i = 0; i < argv.length; i++) {
    if (argv[i] === `--${key}`) return argv[i + 1];
    if (argv[i].startsWith(`--${key}=`)) return argv[i].slice(key.length + 3);
  }
  return undefined;
}

// The file a container would read at `path`, through its volume mounts: {volume, key} or null.
export function mountedFile(pod, container, path) {
  let best = null;
  for (const m of container.volumeMounts ?? []) {
    const base = m.mountPath.replace(/\/$/, "");
    if (path === base && m.subPath) best = { mount: m, key: m.subPath };
    else if (path.startsWith(base + "/") && (!best || base.length > best.mount.mountPath.length)) {
      best = { mount: m, key: path.slice(base.length + 1) };
    }
  }
  if (!best) return null;
  const volume = (pod.volumes ?? []).find((v) => v.name === best.mount.name);
  return volume ? { volume, key: best.key, mount: best.mount } : null;
}

// Settings as the binary would see them: flags > environment > --config file > defaults.
// `configMaps` maps ConfigMap names to objects. Returns {settings, configKeys, configFile,
// problems}.
export function effectiveSettings(pod, container, configMaps) {
  const argv = [...(container.command ?? []), ...(container.args ?? [])];
  const env = {};
  for (const e of container.env ?? []) if (e.value !== undefined) env[e.name] = e.value;
  const problems = [];
  let file = {};
  let configKeys = null;
  const configPath = flagValue(argv, "config");
  if (configPath !== undefined) {
    const found = mountedFile(pod, container, configPath);
    if (!found || !found.volume.configMap) {
      problems.push(`--config ${configPath} is not a file of a mounted ConfigMap`);
    } else {
      const cm = configMaps.get(found.volume.configMap.name);
      const text = cm?.data?.[found.key];
      if (text === undefined) {
        problems.push(`--config ${configPath}: ConfigMap ${found.volume.configMap.name} has no key ${found.key}`);
      } else {
        try {
          file = parseYaml(text) ?? {};
          configKeys = Object.keys(file);
        } catch (e) {
          problems.push(`--config ${configPath} does not parse: ${e.message}`);
        }
      }
    }
  }
  const settings = {};
  const keys = new Set([...STRING_SETTINGS, ...Object.keys(INT_SETTINGS)]);
  for (const key of keys) {
    const fromFlag = flagValue(argv, key);
    const fromEnv = env[envName(key)];
    let value = fromFlag ?? fromEnv ?? file[key];
    if (value === undefined) {
      value = INT_SETTINGS[key] ? INT_SETTINGS[key][2] : STRING_DEFAULTS[key];
    }
    settings[key] = INT_SETTINGS[key] && value !== undefined ? Number(value) : value;
  }
  return { settings, configKeys, file, problems };
}

// "$(VAR)" references Kubernetes expands in env values, command and args.
export function dependentVars(s) {
  return [...String(s).matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)].map((m) => m[1]);
}
