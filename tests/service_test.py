"""End-to-end tests of the service: a real redis-server (AOF on), `qsearch scheduler` and
`qsearch worker` processes on loopback, clients over gRPC (the CLI and Python stubs). Faults are
real: kill -9 of workers, the scheduler and Redis in the middle of jobs."""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import testlib  # noqa: E402
from service_lib import ROOT, Service, free_port, python_stubs, wait_for  # noqa: E402

QSEARCH = "build/qsearch"
FIXTURE = os.path.join(ROOT, "tests", "data", "fixture")


def write_spec(directory, name, search, budget=4.0, extra=None):
    spec = {
        "model": {"config": os.path.join(FIXTURE, "config.json"),
                  "weights": os.path.join(FIXTURE, "model.safetensors")},
        "calibration": {"source": "fashion-mnist:train", "count": 128, "seed": 0},
        "validation": {"source": "fashion-mnist:test", "limit": 1000},
        "search": search,
        "objective": {"avg_weight_bits": budget},
        "accuracy": {"max_abs_top1_drop": 0.01},
        "compute": {"device": "cpu"},
    }
    spec.update(extra or {})
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(spec, f)
    return path


SMALL = {"weight_methods": ["rtn", "gptq"], "weight_bits": [3, 4, 8], "activation_bits": [8]}
OTHER = {"weight_methods": ["rtn"], "weight_bits": [2, 4, 6], "activation_bits": [8]}
LARGE = {"weight_methods": ["rtn", "gptq", "erq"], "weight_bits": [2, 3, 4, 6, 8],
         "activation_bits": [4, 8]}


class ServiceTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="qs_service_test_")
        cls.small = write_spec(cls.tmp, "small.json", SMALL)
        cls.other = write_spec(cls.tmp, "other.json", OTHER, budget=3.5)
        cls.large = write_spec(cls.tmp, "large.json", LARGE)
        cls.embedded = {}
        for name, spec in (("small", cls.small), ("other", cls.other)):
            out = os.path.join(cls.tmp, "embedded_" + name)
            subprocess.run([QSEARCH, "run", "--spec", spec, "--out", out, "--cache",
                            os.path.join(cls.tmp, "cache_" + name), "--json"], check=True,
                           capture_output=True)
            with open(os.path.join(out, "recipe.json"), "rb") as f:
                cls.embedded[name] = f.read()

    def service(self, **kwargs):
        s = Service(QSEARCH, **kwargs).start()
        self.addCleanup(s.close)
        return s

    def candidates(self, service, name):
        with open(os.path.join(self.fetched(service, name), "metrics.json")) as f:
            return json.load(f)["candidates"]

    def fetched(self, service, name):
        out = os.path.join(service.dir, "fetched_" + name.replace("/", "_"))
        if not os.path.exists(os.path.join(out, "metrics.json")):
            service.fetch(name, out)
        return out

    def recipe(self, service, name):
        with open(os.path.join(self.fetched(service, name), "recipe.json"), "rb") as f:
            return f.read()

    def eval_keys(self, service):
        return len(service.redis.cli("--scan", "--pattern", "qs:v1:eval:*").split())

    def test_a_job_over_grpc_with_two_workers_matches_embedded(self):
        s = self.service(workers=0)
        ports = [free_port(), free_port()]
        for p in ports:
            s.add_worker(metrics_port=p)
        name = s.submit(self.small)
        self.assertTrue(name.startswith("jobs/"))
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(self.recipe(s, name), self.embedded["small"])
        files = sorted(os.listdir(self.fetched(s, name)))
        self.assertEqual(files, ["metrics.json", "pareto.json", "recipe.json", "report.html",
                                 "weights.safetensors"])
        # fetch --export refits the fetched recipe on the spec's model and calibration images: the
        # packed weights are the ones the worker wrote, byte for byte.
        exported = os.path.join(s.dir, "fetched_export")
        s.run("fetch", name, "--out", exported, "--export", "safetensors-packed,onnx-qdq",
              "--spec", self.small)
        with open(os.path.join(exported, "weights.safetensors"), "rb") as a, \
                open(os.path.join(exported, "export", "weights.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())
        self.assertTrue(os.path.exists(os.path.join(exported, "export", "model.onnx")))
        r = s.run("fetch", name, "--out", exported, "--export", "onnx-qdq", check=False)
        self.assertEqual(r.returncode, 1)
        self.assertIn("--spec", r.stderr)
        # Both workers took tasks, and every metrics page passes promtool.
        done = []
        for p in ports:
            text = s.metrics(p)
            done.append(sum(float(l.split()[-1]) for l in text.splitlines()
                            if l.startswith("qsearch_tasks_completed_total")))
            r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                               capture_output=True)
            self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertTrue(all(d > 0 for d in done), done)
        text = s.metrics()
        r = subprocess.run(["promtool", "check", "metrics"], input=text, text=True,
                           capture_output=True)
        self.assertEqual(r.returncode, 0, r.stdout + r.stderr)
        self.assertIn('qsearch_jobs_finished_total{state="SUCCEEDED"} 1', text)
        self.assertIn('grpc_method="CreateJob"', text)
        # `list` shows it; a second submit of the same spec evaluates nothing new.
        self.assertIn(name, s.run("list").stdout)
        second = s.submit(self.small)
        self.assertEqual(s.wait_done(second)["state"], "SUCCEEDED")
        self.assertIn("0 evaluated now", s.job(second)["summary"])
        self.assertEqual(self.recipe(s, second), self.embedded["small"])

    def test_workers_killed_mid_task_at_three_points(self):
        import grpc
        # Workers join only once the job waits at its first stage, and every poll below takes
        # milliseconds (redis-cli and a gRPC stub, not a CLI process per poll), so no stage can
        # pass unseen: each kill lands on a worker holding a task of that stage's kind.
        s = self.service(workers=0, lease_seconds=2)
        api = python_stubs(os.path.join(s.dir, "py"))
        search = api["quant_search_pb2_grpc"].QuantSearchStub(grpc.insecure_channel(s.server))
        name = s.submit(self.small)
        s.wait_stage(name, ["prepare"])
        s.add_worker()
        s.add_worker()
        killed = []
        for kind in ("prepare", "evaluate", "validate"):
            def holder():
                pid = next((p for p, k in s.held_tasks() if k == kind), None)
                if pid is None and search.GetJob(api["quant_search_pb2"].GetJobRequest(
                        name=name)).done:
                    raise AssertionError("job ended before a %s task was seen held" % kind)
                return pid
            pid = wait_for(holder, 300, "a worker holding a %s task" % kind)
            for w in s.workers:
                if w.proc.pid == pid:
                    w.kill()
                    killed.append((kind, pid))
            s.add_worker()
        self.assertEqual(len(killed), 3, killed)
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(self.recipe(s, name), self.embedded["small"])
        # Every candidate stored once under its key, none missing.
        self.assertEqual(self.eval_keys(s), self.candidates(s, name))
        self.assertIn(", 0 failed", job["summary"])

    def test_scheduler_killed_and_restarted_resumes_the_job(self):
        s = self.service(workers=2)
        name = s.submit(self.small)
        wait_for(lambda: self.eval_keys(s) >= 10 or None, 300, "some evaluations")
        s.scheduler.kill()
        stored = self.eval_keys(s)
        s.start_scheduler()
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(self.recipe(s, name), self.embedded["small"])
        # The resumed run found what was evaluated before the kill.
        from_cache = int(job["summary"].split(" from the cache")[0].rsplit(", ", 1)[1])
        self.assertGreaterEqual(from_cache, stored)
        self.assertEqual(self.eval_keys(s), self.candidates(s, name))

    def test_redis_killed_and_restarted_mid_job(self):
        s = self.service(workers=2)
        name = s.submit(self.small)
        wait_for(lambda: self.eval_keys(s) >= 5 or None, 300, "some evaluations")
        s.redis.kill()
        time.sleep(1)
        s.redis.start()
        job = s.wait_done(name)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(self.recipe(s, name), self.embedded["small"])

    def test_two_jobs_from_two_clients_both_finish_as_embedded(self):
        s = self.service(workers=2)
        names = {}

        def submit(key, spec):
            names[key] = s.submit(spec)

        threads = [threading.Thread(target=submit, args=("small", self.small)),
                   threading.Thread(target=submit, args=("other", self.other))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for key, name in names.items():
            job = s.wait_done(name)
            self.assertEqual(job["state"], "SUCCEEDED", job)
            self.assertEqual(self.recipe(s, name), self.embedded[key], key)

    def test_cancel_stops_that_job_and_the_other_goes_on(self):
        s = self.service(workers=2)
        big = s.submit(self.large)
        small = s.submit(self.small)
        s.wait_stage(big, ["evaluate"])
        cancelled = json.loads(s.run("cancel", big).stdout)
        self.assertIn(cancelled["state"], ("RUNNING", "CANCELLED"))
        job = s.wait_done(big)
        self.assertEqual(job["state"], "CANCELLED", job)
        self.assertEqual(s.wait_done(small)["state"], "SUCCEEDED")
        self.assertEqual(self.recipe(s, small), self.embedded["small"])
        # Nothing of the cancelled job is left in the queue.
        wait_for(lambda: s.redis.cli("XLEN", "qs:v1:tasks") == "0" or None, 120, "an empty queue")
        again = s.run("cancel", big, check=False)
        self.assertNotEqual(again.returncode, 0)
        self.assertIn("FAILED_PRECONDITION", again.stderr)

    def test_a_second_job_on_the_same_model_and_calibration_skips_the_capture_pass(self):
        s = self.service(workers=0)
        first_port, second_port = free_port(), free_port()
        first = s.add_worker(metrics_port=first_port)
        name = s.submit(self.small)
        self.assertEqual(s.wait_done(name)["state"], "SUCCEEDED")
        text = s.metrics(first_port)
        self.assertIn('qsearch_activation_cache_requests_total{result="miss"} 1', text)
        self.assertNotIn('qsearch_activation_cache_bytes_total{op="write"} 0', text)
        # A fresh worker (no session in memory) serves a second job with another search space
        # over the same model and calibration set.
        first.kill()
        s.add_worker(metrics_port=second_port)
        other = s.submit(self.other)
        job = s.wait_done(other)
        self.assertEqual(job["state"], "SUCCEEDED", job)
        self.assertEqual(self.recipe(s, other), self.embedded["other"])
        text = s.metrics(second_port)
        self.assertIn('qsearch_activation_cache_requests_total{result="hit"} 1', text)
        self.assertIn('qsearch_activation_cache_requests_total{result="miss"} 0', text)

    def test_bad_input_gets_the_right_code_and_the_server_keeps_serving(self):
        import grpc
        s = self.service(workers=0, token="s3cret")
        api = python_stubs(os.path.join(s.dir, "py"))
        pb, blob_pb = api["quant_search_pb2"], api["blob_store_pb2"]
        channel = grpc.insecure_channel(s.server)
        search = api["quant_search_pb2_grpc"].QuantSearchStub(channel)
        blobs = api["blob_store_pb2_grpc"].BlobStoreStub(channel)
        auth = [("authorization", "Bearer s3cret")]

        def code_of(call, *args, **kwargs):
            try:
                call(*args, **kwargs)
            except grpc.RpcError as e:
                return e.code(), e.details()
            return grpc.StatusCode.OK, ""

        # Tokens: none, wrong, right.
        self.assertEqual(code_of(search.ListJobs, pb.ListJobsRequest())[0],
                         grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(code_of(search.ListJobs, pb.ListJobsRequest(),
                                 metadata=[("authorization", "Bearer nope")])[0],
                         grpc.StatusCode.UNAUTHENTICATED)
        self.assertEqual(code_of(search.ListJobs, pb.ListJobsRequest(), metadata=auth)[0],
                         grpc.StatusCode.OK)
        r = s.run("list", token="wrong", check=False)
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("UNAUTHENTICATED", r.stderr)
        # Unknown and malformed job names.
        code, detail = code_of(search.GetJob, pb.GetJobRequest(name="jobs/nothere"), metadata=auth)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND, detail)
        self.assertEqual(code_of(search.GetJob, pb.GetJobRequest(name="nothere"), metadata=auth)[0],
                         grpc.StatusCode.INVALID_ARGUMENT)
        # Malformed specs: a bit-width out of range, a blob never uploaded, no spec.
        spec = api["job_spec_pb2"].JobSpec()
        spec.model.config = "blob:sha256:" + "0" * 64
        spec.model.weights = "blob:sha256:" + "1" * 64
        spec.objective.budget_kind = "avg_weight_bits"
        spec.objective.budget = 4
        spec.search.weight_bits.extend([4, 12])
        code, detail = code_of(search.CreateJob, pb.CreateJobRequest(spec=spec), metadata=auth)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, detail)
        self.assertIn("weight_bits", detail)
        del spec.search.weight_bits[:]
        code, detail = code_of(search.CreateJob, pb.CreateJobRequest(spec=spec), metadata=auth)
        self.assertEqual(code, grpc.StatusCode.NOT_FOUND, detail)
        self.assertEqual(code_of(search.CreateJob, pb.CreateJobRequest(), metadata=auth)[0],
                         grpc.StatusCode.INVALID_ARGUMENT)
        # An upload whose bytes do not match its digest; a digest that is not one.
        content = b"these are not the bytes you declared"
        lie = blob_pb.Digest(sha256=hashlib.sha256(b"other").hexdigest(), size_bytes=len(content))
        code, detail = code_of(blobs.Write, iter([blob_pb.WriteBlobRequest(
            digest=lie, write_offset=0, data=content, finish_write=True)]), metadata=auth)
        self.assertEqual(code, grpc.StatusCode.INVALID_ARGUMENT, detail)
        self.assertIn("discarded", detail)
        bad = blob_pb.Digest(sha256="../../etc/passwd", size_bytes=1)
        self.assertEqual(code_of(blobs.FindMissingBlobs, blob_pb.FindMissingBlobsRequest(
            digests=[bad]), metadata=auth)[0], grpc.StatusCode.INVALID_ARGUMENT)
        # A message over 4 MiB.
        huge = blob_pb.FindMissingBlobsRequest(digests=[
            blob_pb.Digest(sha256="a" * 64, size_bytes=i) for i in range(70000)])
        self.assertGreater(huge.ByteSize(), 4 << 20)
        self.assertEqual(code_of(blobs.FindMissingBlobs, huge, metadata=auth)[0],
                         grpc.StatusCode.RESOURCE_EXHAUSTED)
        self.assertEqual(code_of(search.ListJobs, pb.ListJobsRequest(page_size=5000),
                                 metadata=auth)[0], grpc.StatusCode.INVALID_ARGUMENT)
        # Still serving, health included (which needs no token).
        self.assertEqual(code_of(search.ListJobs, pb.ListJobsRequest(), metadata=auth)[0],
                         grpc.StatusCode.OK)
        self.assertEqual(s.scheduler.proc.poll(), None)
        health = health_stub(s)
        self.assertEqual(health.Check(health.request(service=""), timeout=10).status, 1)

    def test_tls_serves_tls_clients_only(self):
        d = tempfile.mkdtemp(prefix="qs_tls_")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", d]))
        cert, key = os.path.join(d, "cert.pem"), os.path.join(d, "key.pem")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost",
                        "-keyout", key, "-out", cert], check=True, capture_output=True)
        s = Service(QSEARCH, workers=0)
        self.addCleanup(s.close)
        s.redis.start()
        s.scheduler_extra = ["--tls-cert", cert, "--tls-key", key]
        s.start_scheduler()
        port = s.server.rsplit(":", 1)[1]
        ok = subprocess.run([QSEARCH, "list", "--server", "localhost:" + port, "--tls-ca", cert],
                            capture_output=True, text=True, timeout=60)
        self.assertEqual(ok.returncode, 0, ok.stderr)
        plain = subprocess.run([QSEARCH, "list", "--server", "localhost:" + port],
                               capture_output=True, text=True, timeout=60)
        self.assertNotEqual(plain.returncode, 0)
        self.assertIn("UNAVAILABLE", plain.stderr)

    def test_python_client_submits_and_fetches(self):
        import grpc
        s = self.service(workers=2)
        api = python_stubs(os.path.join(s.dir, "py"))
        pb, blob_pb, spec_pb = api["quant_search_pb2"], api["blob_store_pb2"], api["job_spec_pb2"]
        channel = grpc.insecure_channel(s.server)
        search = api["quant_search_pb2_grpc"].QuantSearchStub(channel)
        blobs = api["blob_store_pb2_grpc"].BlobStoreStub(channel)

        def upload(path):
            with open(path, "rb") as f:
                data = f.read()
            digest = blob_pb.Digest(sha256=hashlib.sha256(data).hexdigest(), size_bytes=len(data))
            missing = blobs.FindMissingBlobs(blob_pb.FindMissingBlobsRequest(digests=[digest]))
            if missing.missing:
                chunk = 1 << 20
                requests = [blob_pb.WriteBlobRequest(
                    digest=digest, write_offset=o, data=data[o:o + chunk],
                    finish_write=o + chunk >= len(data)) for o in range(0, len(data), chunk)]
                blobs.Write(iter(requests))
            return "blob:sha256:" + digest.sha256

        spec = spec_pb.JobSpec()
        spec.model.config = upload(os.path.join(FIXTURE, "config.json"))
        spec.model.weights = upload(os.path.join(FIXTURE, "model.safetensors"))
        spec.calibration.source = "fashion-mnist:train"
        spec.calibration.count = 128
        spec.validation.source = "fashion-mnist:test"
        spec.validation.count = 1000
        spec.search.weight_methods.extend(SMALL["weight_methods"])
        spec.search.weight_bits.extend(SMALL["weight_bits"])
        spec.search.activation_bits.extend(SMALL["activation_bits"])
        spec.objective.budget_kind = "avg_weight_bits"
        spec.objective.budget = 4.0
        spec.accuracy.max_abs_top1_drop = 0.01
        spec.compute.device = "cpu"
        job = search.CreateJob(pb.CreateJobRequest(spec=spec, request_id="python-client-1"))
        # The same request again is the same job.
        self.assertEqual(search.CreateJob(pb.CreateJobRequest(
            spec=spec, request_id="python-client-1")).name, job.name)
        last = None
        for event in search.WatchJob(pb.WatchJobRequest(name=job.name)):
            last = event
        self.assertEqual(last.job.state, pb.SUCCEEDED, last)
        result = search.GetResult(pb.GetResultRequest(name=job.name))
        files = {a.file: a.digest for a in result.artifacts}
        recipe = b"".join(c.data for c in blobs.Read(blob_pb.ReadBlobRequest(
            digest=files["recipe.json"])))
        self.assertEqual(recipe, self.embedded["small"])
        # Watching again from a sequence number replays only what came after it.
        tail = list(search.WatchJob(pb.WatchJobRequest(name=job.name, after_seq=last.seq - 1)))
        self.assertEqual([e.seq for e in tail], [last.seq])


def health_stub(service):
    """A grpc.health.v1 client from our own copy of its interface (tests/proto/health.proto)."""
    import grpc
    directory = os.path.join(service.dir, "health")
    os.makedirs(directory, exist_ok=True)
    proto = os.path.join(ROOT, "tests", "proto")
    subprocess.run(["protoc", "-I", proto, "--python_out", directory, "--grpc_python_out",
                    directory, "--plugin=protoc-gen-grpc_python=/usr/bin/grpc_python_plugin",
                    os.path.join(proto, "health.proto")], check=True)
    sys.path.insert(0, directory)
    import health_pb2  # noqa: E402
    import health_pb2_grpc  # noqa: E402
    stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(service.server))
    stub.request = health_pb2.HealthCheckRequest
    return stub


if __name__ == "__main__":
    testlib.main(sys.modules[__name__])
