#!/usr/bin/python3
"""End-to-end tests of the qsearch binary: outputs, replay of a written recipe, and error exits.

  /usr/bin/python3 tests/cli_test.py --qsearch build/qsearch
"""
import json
import os
import subprocess
import sys
import tempfile
import unittest

QSEARCH = "build/qsearch"
CONFIG = "tests/data/fixture/config.json"
WEIGHTS = "tests/data/fixture/model.safetensors"


def run(*args):
    return subprocess.run([QSEARCH, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, timeout=600)


def quantize(out, recipe, *extra):
    return run("--threads", "2", "quantize", "--config", CONFIG, "--weights", WEIGHTS,
               "--recipe", recipe, "--out", out, "--eval-limit", "400", "--calib-count", "64",
               *extra)


class CliTest(unittest.TestCase):
    def test_help_lists_subcommands(self):
        r = run("--help")
        self.assertEqual(r.returncode, 0)
        for sub in ("quantize", "eval", "inspect"):
            self.assertIn(sub, r.stdout)
        r = run("quantize", "--help")
        self.assertEqual(r.returncode, 0)
        self.assertIn("--recipe", r.stdout)

    def test_quantize_writes_artifacts_and_replays_its_recipe(self):
        with tempfile.TemporaryDirectory() as d:
            first = os.path.join(d, "first")
            r = quantize(first, "w4a8:rtn")
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(first, "metrics.json")) as f:
                m = json.load(f)
            for key in ("fp32_top1", "quant_top1", "per_site", "top1_agreement", "model_digest"):
                self.assertIn(key, m)
            self.assertTrue(0.0 <= m["quant_top1"] <= 1.0)
            self.assertEqual(m["eval"]["images"], 400)
            self.assertEqual(m["calibration"]["count"], 64)
            sites = {s["site"]: s for s in m["per_site"]}
            self.assertIn("blocks.0.attn.qkv", sites)
            self.assertIn("blocks.0.attn.av_matmul", sites)
            for s in m["per_site"]:
                self.assertIn("sqnr_db", s)
                self.assertIn("mse", s)
            self.assertEqual(sites["blocks.0.mlp.fc1"]["weight_bits"], 4)
            self.assertEqual(sites["head"]["weight_bits"], 8)
            self.assertTrue(os.path.getsize(os.path.join(first, "weights.safetensors")) > 0)

            # The written recipe replays to the same accuracy, byte-identical recipe included.
            second = os.path.join(d, "second")
            r = quantize(second, os.path.join(first, "recipe.json"))
            self.assertEqual(r.returncode, 0, r.stderr)
            with open(os.path.join(second, "metrics.json")) as f:
                m2 = json.load(f)
            self.assertEqual(m2["quant_top1"], m["quant_top1"])
            with open(os.path.join(first, "recipe.json")) as a, \
                    open(os.path.join(second, "recipe.json")) as b:
                self.assertEqual(a.read(), b.read())

    def test_bench_quick_prints_one_json_object_of_ratios(self):
        r = run("bench", "--quick", "--json")
        self.assertEqual(r.returncode, 0, r.stderr)
        b = json.loads(r.stdout)
        for key in ("gemm_fraction", "search_fp32_pass_ratio", "sweep_candidate_ratio",
                    "validation_fp32_pass_ratio", "gemm_peak_gflops"):
            self.assertGreater(b[key], 0, key)
        self.assertLess(b["gemm_fraction"], 1.5)  # a fraction of the peak measured in the run
        # Not measured by --quick.
        for key in ("peak_rss_vitb_gib", "peak_rss_deits_gib"):
            self.assertIn(key, b)
            self.assertIsNone(b[key], key)
        # The service's figures come from its own benchmarks (bench/dispatch_bench.cc,
        # bench/service_bench.py), not from placeholders here.
        for key in ("two_worker_speedup", "dispatch_tasks_per_s", "cache_second_job_ratio"):
            self.assertNotIn(key, b)
        self.assertIn(b["device"], ("cpu", "cuda:0"))
        self.assertEqual(b["fixture"]["candidates"], 278)
        # Weight-method time by method name, every method, adding up to the total (two timers
        # around the same calls: they differ by microseconds per candidate).
        spent = b["fixture"]["worker_seconds_in"]
        by_name = spent["weight_methods_by_name"]
        self.assertEqual(set(by_name), {"rtn", "gptq", "erq", "liu", "repapq"})
        self.assertAlmostEqual(sum(by_name.values()), spent["weight_methods"],
                               delta=max(1e-3, 0.01 * spent["weight_methods"]))
        self.assertEqual(b["fixture"]["failed"], 0)
        self.assertEqual(b["sweep"]["candidates"], 426)
        self.assertEqual(b["sweep"]["failed"], 0)
        # The ratio is what its parts say.
        self.assertAlmostEqual(
            b["search_fp32_pass_ratio"],
            b["fixture"]["evaluate_seconds"] / b["fixture"]["fp32_calibration_pass_seconds"],
            places=6)

    def test_json_output(self):
        with tempfile.TemporaryDirectory() as d:
            r = quantize(os.path.join(d, "o"), "w8a8", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            m = json.loads(r.stdout)
            self.assertLessEqual(abs(m["quant_top1"] - m["fp32_top1"]), 0.02)

    def test_reparam_flag_folds_where_it_applies_and_replays(self):
        with tempfile.TemporaryDirectory() as d:
            first = os.path.join(d, "first")
            r = quantize(first, "w6a6", "--reparam", "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            m = json.loads(r.stdout)
            folded = {s["site"] for s in m["per_site"] if s["reparam"]}
            self.assertEqual(folded, {"blocks.%d.%s" % (b, n) for b in range(4)
                                      for n in ("attn.qkv", "mlp.fc1", "attn.av_matmul")})
            with open(os.path.join(first, "recipe.json")) as f:
                recipe = json.load(f)
            self.assertTrue(recipe["linear_default"]["reparam"])
            self.assertNotIn("reparam", recipe["sites"]["head"])
            # The recipe carries it: replayed without the flag, the same accuracy.
            r = quantize(os.path.join(d, "second"), os.path.join(first, "recipe.json"), "--json")
            self.assertEqual(r.returncode, 0, r.stderr)
            self.assertEqual(json.loads(r.stdout)["quant_top1"], m["quant_top1"])
            # A recipe asking for it at a site it cannot apply to is refused by name.
            recipe["sites"]["blocks.0.mlp.fc2"] = {"reparam": True}
            bad = os.path.join(d, "bad.json")
            with open(bad, "w") as f:
                json.dump(recipe, f)
            r = quantize(os.path.join(d, "third"), bad)
            self.assertNotEqual(r.returncode, 0)
            self.assertIn("INVALID_ARGUMENT", r.stderr)
            self.assertIn("blocks.0.mlp.fc2", r.stderr)

    def test_errors_are_clear_and_exit_nonzero(self):
        with tempfile.TemporaryDirectory() as d:
            r = run("quantize", "--weights", WEIGHTS, "--recipe", "w8a8", "--out", d)
            self.assertEqual(r.returncode, 2)
            self.assertIn("--config", r.stderr)

            r = quantize(os.path.join(d, "o"), "w9a8")
            self.assertEqual(r.returncode, 1)
            self.assertIn("w9a8", r.stderr)

            r = quantize(os.path.join(d, "o"), "w8a8", "--calib", "imagenet:train")
            self.assertEqual(r.returncode, 1)
            self.assertIn("imagenet:train", r.stderr)

            bad = os.path.join(d, "bad.safetensors")
            with open(WEIGHTS, "rb") as f:
                data = f.read()
            with open(bad, "wb") as f:
                f.write(data[: len(data) // 3])
            r = run("eval", "--config", CONFIG, "--weights", bad)
            self.assertEqual(r.returncode, 1)
            self.assertIn("DATA_LOSS", r.stderr)

            recipe = os.path.join(d, "recipe.json")
            with open(recipe, "w") as f:
                json.dump({"format": "qsearch.recipe.v1",
                           "sites": {"blocks.99.mlp.fc1": {"weight": {"bits": 4}}}}, f)
            r = quantize(os.path.join(d, "o"), recipe)
            self.assertEqual(r.returncode, 1)
            self.assertIn("blocks.99.mlp.fc1", r.stderr)
            self.assertIn("INVALID_ARGUMENT", r.stderr)

            # Thread and worker counts out of range are usage errors naming the option.
            for args in (["--threads", "-2", "eval", "--config", CONFIG, "--weights", WEIGHTS],
                         ["--threads", "100000", "eval", "--config", CONFIG, "--weights", WEIGHTS],
                         ["run", "--spec", recipe, "--out", d, "--workers", "-1"],
                         ["run", "--spec", recipe, "--out", d, "--workers", "100000"],
                         # once read as 2^64-1 and run
                         ["eval", "--config", CONFIG, "--weights", WEIGHTS, "--seed", "-1"],
                         ["quantize", "--config", CONFIG, "--weights", WEIGHTS, "--recipe",
                          "w8a8", "--out", d, "--seed", "-1"]):
                r = run(*args)
                self.assertEqual(r.returncode, 2, args)
                option = next(a for a in ("--threads", "--workers", "--seed") if a in args)
                self.assertIn(option, r.stderr)

            # A service setting from a YAML --config file is range-checked like its flag (it
            # once went through unchecked: a negative deadline, zero running jobs).
            settings = os.path.join(d, "settings.yaml")
            for line, words in (("job-deadline: 5", ["job-deadline", "60..2592000"]),
                                ("max-running: 0", ["max-running", "1..1000"]),
                                ("max-running: many", ["max-running", "wrong type"]),
                                ("deadline: 100", ["unknown key 'deadline'"])):
                with open(settings, "w") as f:
                    f.write(line + "\n")
                r = run("scheduler", "--config", settings)
                self.assertEqual(r.returncode, 1, line)
                for word in words:
                    self.assertIn(word, r.stderr, line)
            r = run("scheduler", "--job-deadline", "5")
            self.assertEqual(r.returncode, 2)
            self.assertIn("--job-deadline", r.stderr)

            # An output directory that cannot be written is refused before any work: a file
            # stands where the directory should be (reproducible as root, unlike a read-only
            # directory). `run` leaves its evaluation cache empty; `quantize` prints nothing.
            blocker = os.path.join(d, "blocker")
            with open(blocker, "w") as f:
                f.write("x")
            cache = os.path.join(d, "cache")
            r = run("run", "--spec", "examples/fixture_search.json", "--out",
                    os.path.join(blocker, "out"), "--cache", cache)
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("--out: " + os.path.join(blocker, "out"), r.stderr)
            self.assertIn("FAILED_PRECONDITION", r.stderr)
            evaluations = os.path.join(cache, "evaluations")
            self.assertEqual(os.listdir(evaluations) if os.path.isdir(evaluations) else [], [])
            r = quantize(os.path.join(blocker, "out"), "w8a8")
            self.assertEqual(r.returncode, 1, r.stderr)
            self.assertIn("--out: ", r.stderr)
            self.assertEqual(r.stdout, "")

            # bench from outside the repository: a clear error, not a crash.
            r = subprocess.run([os.path.abspath(QSEARCH), "bench", "--quick", "--json"], cwd=d,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               timeout=600)
            self.assertEqual(r.returncode, 1)
            self.assertIn("tests/data/fixture", r.stderr)

    def test_inspect_lists_sites(self):
        r = run("inspect", "--config", CONFIG, "--weights", WEIGHTS)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("blocks.0.mlp.fc2", r.stdout)
        self.assertIn("digest", r.stdout)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import testlib
    testlib.main(sys.modules[__name__])
