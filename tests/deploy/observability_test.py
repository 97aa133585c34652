"""What operators see, checked against real processes on loopback: a real Prometheus server
(Debian's prometheus) scrapes a scheduler and two workers while a job runs, and its HTTP API shows
the task counters and the cache hit ratio move; every metric the Grafana dashboard and the alert
rules name is in a live /metrics scrape; and a worker sent SIGTERM in the middle of a task hands
the task back at once (or finishes it within its drain time) instead of leaving it to the lease."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import testlib  # noqa: E402
from service_lib import ROOT, Service, free_port, wait_for  # noqa: E402
from service_test import SMALL, write_spec  # noqa: E402

import yaml  # noqa: E402  (python3-yaml)

QSEARCH = "build/qsearch"
DASHBOARD = os.path.join(ROOT, "deploy", "base", "grafana", "qsearch.json")
ALERTS = os.path.join(ROOT, "deploy", "base", "monitoring", "alerts.rules.yaml")
DEPLOYED_CONFIG = os.path.join(ROOT, "deploy", "base", "config", "config.yaml")
# validate.mjs's copy of the binary's settings, checked against the binary below.
SETTINGS_TABLE = os.path.join(HERE, "lib", "k8s.mjs")

# Series Prometheus or kube-state-metrics make, not our processes.
NOT_OURS = re.compile(r"^(up|scrape_\w+|kube_\w+)$")
PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan", "Inf", "NaN"}


def metric_names(expr):
    """The metric names a PromQL expression reads (functions, labels and keywords left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)        # string literals
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "1m", text)         # Grafana variables
    text = re.sub(r"\{[^}]*\}", "", text)                   # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)                  # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for m in re.finditer(r"(?<![\w:.])([a-zA-Z_:][\w:]*)", text):
        rest = text[m.end():].lstrip()
        if rest.startswith("("):
            continue                                        # a function or an aggregation
        if m.group(1) not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def scraped_families(text):
    """{family name: type} from the # TYPE lines of an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()[:4]
            out[name] = kind
    return out


def family_of(name, families):
    """The family a series name belongs to (histograms add _bucket, _sum and _count)."""
    if name in families:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[: -len(suffix)]
        if name.endswith(suffix) and families.get(base) == "histogram":
            return base
    return None


def dashboard_queries():
    with open(DASHBOARD) as f:
        board = json.load(f)
    panels = []
    stack = list(board.get("panels", []))
    while stack:
        p = stack.pop()
        stack.extend(p.get("panels", []))  # rows
        for t in p.get("targets", []):
            if t.get("expr"):
                panels.append((p.get("title", "?"), t["expr"]))
    return panels


def alert_rules():
    with open(ALERTS) as f:
        doc = yaml.safe_load(f)
    return [(r.get("alert") or r.get("record"), r["expr"]) for g in doc["groups"]
            for r in g["rules"]]


class Prometheus:
    """A real prometheus server scraping `targets` ({job: [host:port]}) every second."""

    def __init__(self, directory, targets, rule_files=()):
        self.dir = os.path.join(directory, "prometheus")
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                  "rule_files": list(rule_files),
                  "scrape_configs": [{"job_name": job, "static_configs": [{"targets": t}]}
                                     for job, t in targets.items()]}
        self.config = os.path.join(self.dir, "prometheus.yml")
        with open(self.config, "w") as f:
            yaml.safe_dump(config, f)
        self.log = open(os.path.join(self.dir, "log"), "wb")
        self.proc = subprocess.Popen(
            ["prometheus", "--config.file", self.config, "--storage.tsdb.path",
             os.path.join(self.dir, "data"), "--web.listen-address", "127.0.0.1:%d" % self.port],
            stdout=self.log, stderr=subprocess.STDOUT)
        wait_for(self.ready, 60, "prometheus")

    def ready(self):
        if self.proc.poll() is not None:
            raise AssertionError("prometheus exited: " + self.text())
        try:
            return urllib.request.urlopen("http://127.0.0.1:%d/-/ready" % self.port,
                                          timeout=2).status == 200
        except OSError:
            return False

    def api(self, path, **params):
        url = "http://127.0.0.1:%d/api/v1/%s?%s" % (self.port, path,
                                                     urllib.parse.urlencode(params))
        try:
            body = urllib.request.urlopen(url, timeout=10).read()
        except urllib.error.HTTPError as e:
            body = e.read()
        return json.loads(body)

    def query(self, expr):
        """The instant vector of `expr` as {labels as a sorted tuple: value}; fails on an error."""
        r = self.api("query", query=expr)
        if r.get("status") != "success":
            raise AssertionError("prometheus refused %r: %s" % (expr, r))
        data = r["data"]
        if data["resultType"] == "scalar":
            return {(): float(data["result"][1])}
        return {tuple(sorted(s["metric"].items())): float(s["value"][1]) for s in data["result"]}

    def value(self, expr):
        """The single value of `expr`, or None when it has no series."""
        v = self.query(expr)
        return next(iter(v.values())) if v else None

    def text(self):
        with open(os.path.join(self.dir, "log"), "rb") as f:
            return f.read().decode(errors="replace")[-3000:]

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


class ObservabilityTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="qs_observability_test_")
        cls.small = write_spec(cls.tmp, "small.json", SMALL)

    def service(self, **kwargs):
        s = Service(QSEARCH, **kwargs).start()
        self.addCleanup(s.close)
        return s

    def test_metric_name_extraction(self):
        # The checks below are only as good as this parser.
        self.assertEqual(metric_names(
            'histogram_quantile(0.95, sum by (le, kind) (rate(qsearch_task_duration_seconds_bucket'
            '{job=~"$job"}[$__rate_interval])))'), {"qsearch_task_duration_seconds_bucket"})
        self.assertEqual(metric_names(
            'sum(qsearch_queue_lag) > 0 and on() (count(up{job="w"} == 1) or vector(0)) == 0'),
            {"qsearch_queue_lag", "up"})
        self.assertEqual(metric_names('a_total / ignoring(result) b offset 1d'), {"a_total", "b"})
        fams = {"h": "histogram", "c_total": "counter"}
        self.assertEqual(family_of("h_bucket", fams), "h")
        self.assertEqual(family_of("c_total", fams), "c_total")
        self.assertIsNone(family_of("c_total_bucket", fams))
        self.assertIsNone(family_of("nope", fams))

    def test_deploy_checks_know_the_binarys_settings(self):
        # tests/deploy/validate.mjs checks config.yaml and QSEARCH_* variables in the manifests
        # without a binary; its table of settings must be the binary's.
        with open(SETTINGS_TABLE) as f:
            table = f.read()
        ints = {m.group(1): tuple(int(eval(x)) for x in m.group(2, 3, 4)) for m in re.finditer(
            r'^\s*"([a-z-]+)": \[([^,\]]+), ([^,\]]+), ([^,\]]+)\],$', table, re.M)}
        strings = set(re.findall(r'"([a-z-]+)"', re.search(
            r"STRING_SETTINGS = new Set\(\[(.*?)\]\)", table, re.S).group(1)))
        self.assertIn("drain-seconds", ints)
        binary_ints, binary_strings = {}, set()
        for role in ("scheduler", "worker"):
            text = subprocess.run([QSEARCH, role, "--help"], capture_output=True, text=True,
                                  check=True).stdout
            for m in re.finditer(r"--([a-z-]+) INT:INT in \[(-?\d+) - (-?\d+)\]=(-?\d+)", text):
                binary_ints[m.group(1)] = tuple(int(x) for x in m.group(2, 3, 4))
            binary_strings |= set(re.findall(r"--([a-z-]+) TEXT", text)) - {"config"}
        self.assertEqual(ints, binary_ints)
        # The client's --server is in the table too (one file for all the roles' keys).
        self.assertEqual(strings - {"server"}, binary_strings)

    def test_prometheus_sees_tasks_and_the_cache_hit_ratio_move(self):
        # The processes read the config the Kubernetes manifests mount (flags win over it).
        s = self.service(workers=0, config=DEPLOYED_CONFIG)
        worker_ports = [free_port(), free_port()]
        for p in worker_ports:
            s.add_worker(metrics_port=p)
        prom = Prometheus(s.dir, {
            "qsearch-scheduler": ["127.0.0.1:%d" % s.metrics_port],
            "qsearch-worker": ["127.0.0.1:%d" % p for p in worker_ports],
        }, rule_files=[ALERTS])
        self.addCleanup(prom.close)
        wait_for(lambda: prom.value('count(up == 1)') == 3, 60, "three targets up")
        hit_ratio = [e for t, e in dashboard_queries() if "hit ratio" in t.lower()]
        self.assertEqual(len(hit_ratio), 1, "the dashboard has one cache hit ratio panel")
        hit_ratio = hit_ratio[0].replace("$__rate_interval", "1m").replace("$__range", "1h")
        # Before any job: no task ended, no lookup (the ratio has no value, 0/0).
        self.assertEqual(prom.value("sum(qsearch_tasks_completed_total) or vector(0)"), 0)
        self.assertIsNone(prom.value(hit_ratio))

        name = s.submit(self.small)
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)

        # The counters move, on both workers, to what the workers' own pages say: prepare, one
        # evaluation per site, validations, the test and the weights.
        direct = [sum(float(line.split()[-1]) for line in s.metrics(p).splitlines()
                      if line.startswith("qsearch_tasks_completed_total") and 'result="ok"' in line)
                  for p in worker_ports]
        self.assertTrue(all(d > 0 for d in direct), direct)
        self.assertGreater(sum(direct), 5)

        def per_worker():
            v = prom.query('sum by (instance) (qsearch_tasks_completed_total{job="qsearch-worker",'
                           'result="ok"})')
            return sorted(v.values()) == sorted(direct) or None
        wait_for(per_worker, 30, "prometheus to see each worker's %s tasks" % direct)
        wait_for(lambda: prom.value(
            'qsearch_jobs_finished_total{job="qsearch-scheduler",state="SUCCEEDED"}') == 1, 30,
            "the finished job in prometheus")
        # The first worker's session missed and captured; the other one's hit what it stored.
        self.assertEqual(wait_for(lambda: prom.value(
            'sum(qsearch_activation_cache_requests_total{result="hit"}) / '
            'sum(qsearch_activation_cache_requests_total)'), 30, "the lookups in prometheus"), 0.5)
        # The panel's ratio of rates (rate() extrapolates the window's edges: near, not at, 1/2).
        ratio = wait_for(lambda: prom.value(hit_ratio), 30, "the panel's cache hit ratio")
        self.assertGreater(ratio, 0.3)
        self.assertLess(ratio, 0.7)
        self.assertEqual(prom.value(
            'sum(qsearch_activation_cache_requests_total{result="hit"})'), 1)
        self.assertGreater(prom.value(
            'sum(qsearch_activation_cache_bytes_total{op="write"})'), 0)

        # Every dashboard panel and alert rule is a query Prometheus accepts, over metrics the
        # processes really export.
        families = {}
        for port in [s.metrics_port] + worker_ports:
            families.update(scraped_families(s.metrics(port)))
        queries = dashboard_queries() + alert_rules()
        self.assertGreater(len(dashboard_queries()), 8)
        for title, expr in queries:
            concrete = expr.replace("$__rate_interval", "1m").replace("$__range", "1h")
            concrete = re.sub(r"\$\{?\w+\}?", ".*", concrete)
            prom.query(concrete)
            for n in metric_names(expr):
                if NOT_OURS.match(n):
                    continue
                self.assertIsNotNone(family_of(n, families),
                                     "%r (in %r) is not in a live scrape" % (n, title))
        # The alert rules loaded and evaluate without error; none fires on a healthy service.
        rules = prom.api("rules")["data"]["groups"]
        loaded = [r for g in rules for r in g["rules"]]
        self.assertEqual(len(loaded), len(alert_rules()))
        wait_for(lambda: all(r.get("health") == "ok" for g in prom.api("rules")["data"]["groups"]
                             for r in g["rules"]), 30, "every rule evaluated")
        firing = [a for a in prom.api("alerts")["data"]["alerts"] if a["state"] == "firing"]
        self.assertEqual(firing, [])

    def test_sigterm_hands_a_busy_workers_task_back_at_once(self):
        # A lease far longer than the test: a task left to it would stall the job.
        s = self.service(workers=0, lease_seconds=600)
        name = s.submit(self.small)
        s.wait_stage(name, ["prepare"])

        def sigterm_while_holding(drain_seconds):
            w = s.add_worker(extra=["--drain-seconds", str(drain_seconds)])
            wait_for(lambda: w.proc.pid in s.holders() or None, 120, "the worker holding a task")
            start = time.time()
            w.proc.send_signal(signal.SIGTERM)
            self.assertEqual(w.proc.wait(timeout=60 + drain_seconds), 0, w.text())
            return w, time.time() - start

        # No drain time: the task in hand (the prepare task, seconds long) goes back at once.
        first, took = sigterm_while_holding(0)
        self.assertLess(took, 5, first.text())
        handed_back = re.compile(r"task \S+ of job \S+ handed back")
        self.assertRegex(first.text(), handed_back)
        self.assertNotIn(first.proc.pid, s.holders())
        self.assertEqual(s.redis.cli("XLEN", "qs:v1:tasks:dead"), "0")
        stage = s.job(name)["progress"]["stage"]
        self.assertEqual(stage, "prepare")
        # Queued again, undelivered, for the next worker.
        groups = s.redis.cli("XINFO", "GROUPS", "qs:v1:tasks").splitlines()
        self.assertEqual(groups[groups.index("lag") + 1], "1", groups)

        # With drain time: the next worker finishes the task in hand, then exits.
        second, took = sigterm_while_holding(120)
        self.assertNotRegex(second.text(), handed_back)
        self.assertLess(took, 120)
        wait_for(lambda: s.job(name)["progress"]["stage"] != "prepare" or None, 30,
                 "the job past prepare")

        # A third worker finishes the job: nothing was lost or counted against the task.
        s.add_worker()
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertIn(", 0 failed", job["summary"])
        self.assertEqual(s.redis.cli("XLEN", "qs:v1:tasks:dead"), "0")


if __name__ == "__main__":
    testlib.main(sys.modules[__name__])
