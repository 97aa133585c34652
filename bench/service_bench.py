"""The service under load, with real processes on loopback (tests/service_lib.py):

- scaling: one job evaluated by one worker process against two, each pinned to a core of its own
  with taskset and running one task loop (the reference: the one-worker run of the same job, in
  the same session, on fresh Redis and caches);
- a second job on the same model and calibration set (another budget) against the first;
- the same second job on fresh worker processes, which restore the calibration checkpoints from
  the activation cache instead of loading them in memory.

Wall times are from `qsearch submit --wait` to its return; each job's own stage times come from
its metrics.json. Writes JSON (stdout, and --out).

  /usr/bin/python3 bench/service_bench.py --qsearch build/qsearch --out bench/results/service.json
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "tests"))
from service_lib import ROOT, Service  # noqa: E402

FIXTURE = os.path.join(ROOT, "tests", "data", "fixture")


def spec(directory, name, budget, calibration):
    s = {
        "model": {"config": os.path.join(FIXTURE, "config.json"),
                  "weights": os.path.join(FIXTURE, "model.safetensors")},
        "calibration": {"source": "fashion-mnist:train", "count": calibration, "seed": 0},
        "validation": {"source": "fashion-mnist:test", "limit": 1000},
        "search": {"weight_methods": ["rtn", "gptq", "erq"], "weight_bits": [2, 3, 4, 6, 8],
                   "activation_bits": [4, 6, 8]},
        "objective": {"avg_weight_bits": budget},
        "compute": {"device": "cpu"},
    }
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        json.dump(s, f)
    return path


class PinnedService(Service):
    """Workers pinned one per core, as pods with one CPU each would run."""

    def add_worker(self, metrics_port=None):
        w = super().add_worker(metrics_port)
        core = (len(self.workers) - 1) % os.cpu_count()
        subprocess.run(["taskset", "-a", "-p", "-c", str(core), str(w.proc.pid)], check=True,
                       capture_output=True)
        return w


def run_job(service, path):
    start = time.time()
    name = service.run("submit", "--spec", path, "--wait").stdout.splitlines()[0].strip()
    wall = time.time() - start
    out = os.path.join(service.dir, "out_" + name.replace("/", "_"))
    service.fetch(name, out)
    with open(os.path.join(out, "metrics.json")) as f:
        metrics = json.load(f)
    with open(os.path.join(out, "recipe.json"), "rb") as f:
        recipe = f.read()
    return {"wall_seconds": wall, "stage_seconds": metrics["seconds"],
            "evaluated_now": metrics["evaluations"],
            "from_cache": metrics["evaluations_from_cache"],
            "candidates": metrics["candidates"]}, recipe


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--qsearch", default="build/qsearch")
    parser.add_argument("--calibration", type=int, default=512)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    qsearch = os.path.abspath(args.qsearch)
    tmp = tempfile.mkdtemp(prefix="qs_service_bench_")
    first = spec(tmp, "first.json", 4.0, args.calibration)
    second = spec(tmp, "second.json", 5.0, args.calibration)
    result = {"bench": "service", "cores": os.cpu_count(), "calibration_images": args.calibration}

    runs = {}
    recipes = {}
    for workers in (1, 2):
        s = PinnedService(qsearch, workers=workers).start()
        try:
            runs[workers], recipes[workers] = run_job(s, first)
            if workers == 2:
                result["second_job_same_workers"], _ = run_job(s, second)
                for w in list(s.workers):
                    w.kill()
                s.workers = []
                for _ in range(2):
                    s.add_worker()
                result["second_job_fresh_workers"], _ = run_job(s, second)
        finally:
            s.close()
    one, two = runs[1], runs[2]
    result["one_worker"] = one
    result["two_workers"] = two
    result["same_recipe"] = recipes[1] == recipes[2]
    result["speedup_wall"] = one["wall_seconds"] / two["wall_seconds"]
    result["speedup_evaluate"] = one["stage_seconds"]["evaluate"] / two["stage_seconds"]["evaluate"]
    result["second_job_ratio_same_workers"] = (
        result["second_job_same_workers"]["wall_seconds"] / two["wall_seconds"])
    result["second_job_ratio_fresh_workers"] = (
        result["second_job_fresh_workers"]["wall_seconds"] / two["wall_seconds"])
    text = json.dumps(result, indent=2, sort_keys=True)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
