"""Real processes on loopback for the service tests: redis-server (append-only, fsync always),
`qsearch scheduler` and `qsearch worker`, each on a free port, plus Python stubs of the API
generated from proto/ by protoc and the grpc_python_plugin (Debian's protobuf-compiler-grpc)."""
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting for " + what)


def redis_cli(port, *args):
    return subprocess.run(["redis-cli", "-p", str(port), "--raw", *args], capture_output=True,
                          text=True, timeout=30).stdout.strip()


class Redis:
    def __init__(self, directory):
        self.port = free_port()
        self.dir = directory
        self.proc = None

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def start(self):
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "yes", "--appendfsync", "always", "--dir", self.dir,
             "--logfile", os.path.join(self.dir, "redis.log")])
        wait_for(lambda: redis_cli(self.port, "PING") == "PONG", 20, "redis-server")

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def cli(self, *args):
        return redis_cli(self.port, *args)


class Process:
    """A qsearch scheduler or worker, its output in a log file."""

    def __init__(self, qsearch, role, args, log):
        self.qsearch, self.role, self.args, self.log_path = qsearch, role, args, log
        self.proc = None

    def start(self):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([self.qsearch, self.role, *self.args], stdout=self.log,
                                     stderr=subprocess.STDOUT)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()
        if self.proc:
            self.log.close()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


class Service:
    """Redis, a scheduler and `workers` workers, all on loopback in a temporary directory."""

    def __init__(self, qsearch, workers=2, lease_seconds=3, token=None, config=None):
        self.qsearch = qsearch
        # A --config file for every process; the flags below win over it.
        self.config = config
        self.dir = tempfile.mkdtemp(prefix="qs_service_")
        self.redis = Redis(self.dir)
        self.blobs = os.path.join(self.dir, "blobs")
        self.port = free_port()
        self.metrics_port = free_port()
        self.lease_seconds = lease_seconds
        self.token_file = None
        if token:
            self.token_file = os.path.join(self.dir, "tokens")
            with open(self.token_file, "w") as f:
                f.write("# accepted tokens\n%s\n" % token)
        self.scheduler = None
        self.workers = []
        self.n_workers = workers

    @property
    def server(self):
        return "127.0.0.1:%d" % self.port

    def common_args(self):
        args = ["--config", self.config] if self.config else []
        args += ["--redis", self.redis.url, "--blob-dir", self.blobs,
                 "--lease-seconds", str(self.lease_seconds)]
        return args

    def start(self):
        self.redis.start()
        self.start_scheduler()
        for _ in range(self.n_workers):
            self.add_worker()
        return self

    def start_scheduler(self):
        args = self.common_args() + ["--listen", self.server, "--metrics-listen",
                                     "127.0.0.1:%d" % self.metrics_port]
        if self.token_file:
            args += ["--token-file", self.token_file]
        args += getattr(self, "scheduler_extra", [])
        self.schedulers_started = getattr(self, "schedulers_started", 0) + 1
        self.scheduler = Process(self.qsearch, "scheduler", args, os.path.join(
            self.dir, "scheduler%d.log" % self.schedulers_started))
        self.scheduler.start()
        wait_for(lambda: "serving on" in self.scheduler.text() or self.scheduler.proc.poll()
                 is not None, 30, "the scheduler")
        if self.scheduler.proc.poll() is not None:
            raise AssertionError("scheduler exited:\n" + self.scheduler.text())

    def add_worker(self, metrics_port=None, extra=()):
        args = self.common_args() + ["--listen", "", "--worker-threads", "1", *extra]
        if metrics_port:
            args += ["--metrics-listen", "127.0.0.1:%d" % metrics_port]
        w = Process(self.qsearch, "worker", args,
                    os.path.join(self.dir, "worker%d.log" % len(self.workers)))
        w.start()
        self.workers.append(w)
        return w

    def client_args(self, token=None):
        args = ["--server", self.server]
        if token is not None:
            path = os.path.join(self.dir, "client_token_%d" % abs(hash(token)))
            with open(path, "w") as f:
                f.write(token + "\n")
            args += ["--token-file", path]
        elif self.token_file:
            args += ["--token-file", self.token_file]
        return args

    def run(self, command, *args, token=None, check=True, timeout=600):
        r = subprocess.run([self.qsearch, command, *self.client_args(token), *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("qsearch %s failed (%d):\n%s\n%s\n--- scheduler log:\n%s" % (
                command, r.returncode, r.stdout, r.stderr, self.scheduler.text()[-3000:]))
        return r

    def submit(self, spec):
        return self.run("submit", "--spec", spec).stdout.strip()

    def job(self, name):
        return json.loads(self.run("get", name).stdout)

    def wait_done(self, name, timeout=600):
        return wait_for(lambda: (lambda j: j if j.get("done") else None)(self.job(name)),
                        timeout, "job " + name)

    def wait_stage(self, name, stages, timeout=300):
        def reached():
            j = self.job(name)
            stage = j.get("progress", {}).get("stage", "")
            if j.get("done"):
                raise AssertionError("job ended before reaching %s: %s" % (stages, j))
            return j if stage in stages else None
        return wait_for(reached, timeout, "job %s at %s" % (name, stages))

    def holders(self):
        """Pids of the workers holding a task now (from the stream's pending entries)."""
        return {pid for pid, _ in self.held_tasks()}

    def held_tasks(self):
        """(worker pid, task kind) for every task a worker holds now, read from the stream's
        pending entries and their payloads: one redis-cli call each, milliseconds, so a poll
        does not miss a short stage as a `qsearch get` per poll can (seconds under ASan)."""
        out = self.redis.cli("XPENDING", "qs:v1:tasks", "workers", "-", "+", "100").splitlines()
        held = []
        for entry, consumer in zip(out[0::4], out[1::4]):
            if not consumer.startswith("worker-"):
                continue
            fields = self.redis.cli("XRANGE", "qs:v1:tasks", entry, entry).splitlines()
            if "payload" not in fields:
                continue  # finished between the two calls
            kind = json.loads(fields[fields.index("payload") + 1]).get("kind", "")
            held.append((int(consumer.rsplit("-", 1)[1]), kind))
        return held

    def metrics(self, port=None):
        url = "http://127.0.0.1:%d/metrics" % (port or self.metrics_port)
        return urllib.request.urlopen(url, timeout=10).read().decode()

    def fetch(self, name, out):
        self.run("fetch", name, "--out", out)
        with open(os.path.join(out, "recipe.json"), "rb") as f:
            return f.read()

    def close(self):
        for w in self.workers:
            w.kill()
        if self.scheduler:
            self.scheduler.kill()
        self.redis.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


def python_stubs(directory):
    """Generates the API's Python modules into `directory` and imports them."""
    proto = os.path.join(ROOT, "proto")
    os.makedirs(directory, exist_ok=True)
    files = [os.path.join(proto, "qsearch", "v1", f)
             for f in ("job_spec.proto", "blob_store.proto", "quant_search.proto")]
    subprocess.run(["protoc", "-I", proto, "--python_out", directory, "--grpc_python_out",
                    directory, "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                    *files], check=True)
    sys.path.insert(0, directory)
    names = ["qsearch.v1.job_spec_pb2", "qsearch.v1.blob_store_pb2",
             "qsearch.v1.blob_store_pb2_grpc", "qsearch.v1.quant_search_pb2",
             "qsearch.v1.quant_search_pb2_grpc"]
    return {n.rsplit(".", 1)[1]: importlib.import_module(n) for n in names}
