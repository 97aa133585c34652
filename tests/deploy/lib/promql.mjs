// The metric names (and the label names of their matchers) a PromQL expression reads: enough to
// check that dashboards and alert rules only use metrics the processes export. Not a parser: it
// relies on the expressions being ordinary (no metric names inside strings, no `__name__`).

const KEYWORDS = new Set([
  "and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
  "group_right", "inf", "nan", "Inf", "NaN", "start", "end",
]);

export function selectors(expr) {
  let text = expr.replace(/"(?:[^"\\]|\\.)*"/g, '""').replace(/'(?:[^'\\]|\\.)*'/g, "''");
  text = text.replace(/\$\{[^}]*\}|\$\w+/g, "1m"); // Grafana variables
  text = text.replace(/\[[^\]]*\]/g, ""); // ranges and subqueries
  text = text.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  const out = [];
  const re = /(?<![\w:.])([a-zA-Z_:][\w:]*)\s*(\{[^}]*\})?/g;
  let m;
  while ((m = re.exec(text)) !== null) {
    const name = m[1];
    const rest = text.slice(m.index + m[0].length).trimStart();
    if (!m[2] && rest.startsWith("(")) continue; // a function or an aggregation
    if (KEYWORDS.has(name)) continue;
    const labels = [];
    if (m[2]) {
      for (const lm of m[2].matchAll(/([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)/g)) labels.push(lm[1]);
    }
    out.push({ name, labels });
  }
  return out;
}

export function metricNames(expr) {
  return new Set(selectors(expr).map((s) => s.name));
}

// {name: {type, labels}} from docs/api.md's "Metrics" table: the exported metrics, as documented.
export function documentedMetrics(markdown) {
  const section = markdown.split(/^## /m).find((s) => s.startsWith("Metrics"));
  if (!section) throw new Error("docs/api.md has no '## Metrics' section");
  const metrics = {};
  for (const line of section.split("\n")) {
    const cells = line.split("|").map((c) => c.trim());
    if (cells.length < 4 || !cells[1].includes("`")) continue;
    const names = [...cells[1].matchAll(/`([a-zA-Z_:][\w:]*)`/g)].map((x) => x[1]);
    const type = cells[2];
    const labelCells = cells[3].replace(/\([^)]*\)/g, "").split(",").map((c) => c.trim());
    names.forEach((name, i) => {
      // "–, state": one label list per name, in order; a single list applies to all.
      const own = labelCells.length === names.length ? [labelCells[i]] : labelCells;
      const labels = own.flatMap((c) => c.split(/\s+/)).filter((c) => /^[a-z_]+$/.test(c));
      metrics[name] = { type, labels };
    });
  }
  return metrics;
}

// The series names a documented metric family gives (histograms: _bucket, _sum, _count).
export function seriesNames(metrics) {
  const out = {};
  for (const [name, m] of Object.entries(metrics)) {
    if (m.type === "histogram") {
      out[name + "_bucket"] = { family: name, labels: [...m.labels, "le"] };
      out[name + "_sum"] = { family: name, labels: m.labels };
      out[name + "_count"] = { family: name, labels: m.labels };
    } else {
      out[name] = { family: name, labels: m.labels };
    }
  }
  return out;
}
