#!/usr/bin/python3
"""End-to-end tests of `qsearch run` on the fixture: outputs, replay, cache reuse, resume after a
kill, determinism, spec errors, and the report rendered in headless Chromium.

  /usr/bin/python3 tests/search_test.py --qsearch build/qsearch
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import unittest

QSEARCH = "build/qsearch"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# The sanitized suite (scripts/test_sanitized.sh) runs the search's own machinery here (scheduler,
# workers, caches, resume, artifacts) and leaves the tests whose time goes to one method's
# arithmetic, which its unit tests already run under the sanitizers, to the main suite.
main_suite_only = unittest.skipIf(
    os.environ.get("QS_SANITIZED"),
    "a method's arithmetic, run under the sanitizers by its unit tests; this runs in the main suite")


def spec(d, name, **overrides):
    s = {
        "model": {"config": os.path.join(ROOT, "tests/data/fixture/config.json"),
                  "weights": os.path.join(ROOT, "tests/data/fixture/model.safetensors")},
        "calibration": {"source": "fashion-mnist:train", "count": 64, "seed": 0},
        "validation": {"source": "fashion-mnist:test", "limit": 500},
        "search": {"weight_methods": ["rtn"], "weight_bits": [3, 4, 8], "activation_bits": [8]},
        "objective": {"avg_weight_bits": 4.0},
    }
    for key, value in overrides.items():
        s[key] = value
    path = os.path.join(d, name)
    with open(path, "w") as f:
        json.dump(s, f)
    return path


def run(spec_path, out, cache, *extra, check=True):
    r = subprocess.run([QSEARCH, "--threads", "2", "run", "--spec", spec_path, "--out", out,
                        "--cache", cache, "--json", *extra],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
    if check and r.returncode != 0:
        raise AssertionError(r.stderr)
    return r


def write_family(d, name, seed):
    """A small model of the reference family variant `name` (tests/reference) in d/config.json
    and d/model.safetensors, and 96 images with random labels in d/data.safetensors."""
    sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
    import torch
    import vit_reference as ref
    config, tensors, images = ref.family_variant(name, count=96)
    ref.write_safetensors(os.path.join(d, "model.safetensors"), tensors)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(config, f)
    torch.manual_seed(seed)
    labels = torch.randint(0, config["num_classes"], (96,), dtype=torch.int64)
    ref.write_safetensors(os.path.join(d, "data.safetensors"),
                          {"images": images, "labels": labels})
    return config


def replay(d):
    """`qsearch quantize` with the search's recipe (d/out/recipe.json) on the test slice of
    d/data.safetensors, with the calibration draw the family searches use."""
    return subprocess.run([QSEARCH, "quantize", "--config", os.path.join(d, "config.json"),
                           "--weights", os.path.join(d, "model.safetensors"),
                           "--recipe", os.path.join(d, "out", "recipe.json"),
                           "--calib", os.path.join(d, "data.safetensors[:48]"),
                           "--calib-count", "32", "--seed", "1",
                           "--eval", os.path.join(d, "data.safetensors[72:]"),
                           "--out", os.path.join(d, "replay"), "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def replay_single_stream(model_dir, recipe, out):
    """`qsearch --threads 2 quantize` with `recipe` on the model in model_dir, calibrated on the
    draw of spec()'s calibration and measured on its validation images, single-stream as a
    search's validation runs."""
    return subprocess.run([QSEARCH, "--threads", "2", "quantize",
                           "--config", os.path.join(model_dir, "config.json"),
                           "--weights", os.path.join(model_dir, "model.safetensors"),
                           "--recipe", recipe, "--out", out, "--calib-count", "64",
                           "--seed", "0", "--eval-limit", "500", "--json"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def cached_files(cache):
    n = 0
    for _, _, files in os.walk(os.path.join(cache, "evaluations")):
        n += sum(1 for f in files if f.endswith(".json"))
    return n


class SearchTest(unittest.TestCase):
    def test_run_writes_artifacts_replays_and_reuses_the_cache(self):
        with tempfile.TemporaryDirectory() as d:
            cache = os.path.join(d, "cache")
            out = os.path.join(d, "out4")
            r = run(spec(d, "s4.json"), out, cache)
            m = json.loads(r.stdout)
            for key in ("fp32_top1", "quant_top1", "avg_weight_bits", "evaluations", "goal_met"):
                self.assertIn(key, m)
            # Stage times, and the references they are reported against, from this very run.
            seconds = m["seconds"]
            for key in ("prepare", "evaluate", "select", "validate", "artifacts", "wall",
                        "fp32_calibration_pass", "fp32_validation_pass"):
                self.assertGreater(seconds[key], 0, key)
            self.assertLessEqual(seconds["prepare"] + seconds["evaluate"] + seconds["validate"],
                                 seconds["wall"])
            self.assertAlmostEqual(m["relative"]["evaluate_in_fp32_calibration_passes"],
                                   seconds["evaluate"] / seconds["fp32_calibration_pass"], places=6)
            self.assertEqual(m["calibration_images"], 64)
            self.assertEqual(m["device"], "cpu")
            self.assertTrue(m["goal_met"])
            self.assertLessEqual(m["avg_weight_bits"], 4.0 + 1e-9)
            self.assertEqual(m["evaluations"], m["candidates"])
            for name in ("recipe.json", "metrics.json", "pareto.json", "weights.safetensors",
                         "report.html"):
                self.assertTrue(os.path.getsize(os.path.join(out, name)) > 0, name)
            with open(os.path.join(out, "pareto.json")) as f:
                points = json.load(f)["points"]
            for a, b in zip(points, points[1:]):
                self.assertGreater(b["cost_units"], a["cost_units"])
                self.assertLess(b["predicted_loss"], a["predicted_loss"])
            self.assertEqual(sum(p["chosen"] for p in points), 1)

            # The recipe replays through `qsearch quantize` to the same validated accuracy.
            replay = os.path.join(d, "replay")
            q = subprocess.run([QSEARCH, "--threads", "2", "quantize",
                                "--config", os.path.join(ROOT, "tests/data/fixture/config.json"),
                                "--weights", os.path.join(ROOT, "tests/data/fixture/model.safetensors"),
                                "--recipe", os.path.join(out, "recipe.json"), "--out", replay,
                                "--calib-count", "64", "--seed", "0", "--eval-limit", "500",
                                "--json"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(q.returncode, 0, q.stderr)
            self.assertEqual(json.loads(q.stdout)["quant_top1"], m["quant_top1"])

            # Another budget on the same model and calibration set evaluates nothing new.
            r3 = run(spec(d, "s3.json", objective={"avg_weight_bits": 3.0}),
                     os.path.join(d, "out3"), cache)
            m3 = json.loads(r3.stdout)
            self.assertEqual(m3["evaluations"], 0)
            self.assertEqual(m3["evaluations_from_cache"], m["candidates"])
            self.assertLessEqual(m3["avg_weight_bits"], 3.0 + 1e-9)

    def test_same_spec_same_recipe_bytes_with_fresh_caches(self):
        with tempfile.TemporaryDirectory() as d:
            s = spec(d, "s.json", search={"weight_methods": ["rtn"], "weight_bits": [4, 8],
                                          "activation_bits": [8]})
            run(s, os.path.join(d, "a"), os.path.join(d, "cache_a"))
            run(s, os.path.join(d, "b"), os.path.join(d, "cache_b"))
            with open(os.path.join(d, "a", "recipe.json"), "rb") as a, \
                    open(os.path.join(d, "b", "recipe.json"), "rb") as b:
                self.assertEqual(a.read(), b.read())

    def test_resume_after_kill_redoes_no_finished_evaluation(self):
        with tempfile.TemporaryDirectory() as d:
            cache = os.path.join(d, "cache")
            s = spec(d, "s.json", search={"weight_methods": ["rtn", "gptq", "erq"],
                                          "weight_bits": [2, 3, 4, 8], "activation_bits": [8]})
            p = subprocess.Popen([QSEARCH, "--threads", "2", "run", "--spec", s, "--out",
                                  os.path.join(d, "killed"), "--cache", cache],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            deadline = time.time() + 300
            while cached_files(cache) < 25 and time.time() < deadline and p.poll() is None:
                time.sleep(0.05)
            still_running = p.poll() is None
            p.send_signal(signal.SIGKILL)
            p.wait()
            self.assertTrue(still_running, "the run finished before it could be killed")
            self.assertFalse(os.path.exists(os.path.join(d, "killed", "metrics.json")))
            at_kill = cached_files(cache)
            self.assertGreaterEqual(at_kill, 25)
            r = run(s, os.path.join(d, "resumed"), cache)
            m = json.loads(r.stdout)
            self.assertGreaterEqual(m["evaluations_from_cache"], at_kill)
            self.assertEqual(m["evaluations"] + m["evaluations_from_cache"], m["candidates"])
            self.assertLess(m["evaluations"], m["candidates"])

    def test_spec_errors_name_the_field(self):
        with tempfile.TemporaryDirectory() as d:
            cases = [({"objective": {}}, "exactly one budget"),
                     ({"search": {"weight_bits": [4, 12]}}, "weight_bits[1]"),
                     ({"calibration": {"count": -1}}, "count"),
                     ({"objectve": {"avg_weight_bits": 4}}, "objectve"),
                     ({"compute": {"device": "tpu"}}, "device"),
                     ({"search": {"activation_calibrators": ["kl"]}}, "kl")]
            for overrides, needle in cases:
                r = run(spec(d, "bad.json", **overrides), os.path.join(d, "o"),
                        os.path.join(d, "c"), check=False)
                self.assertEqual(r.returncode, 1, overrides)
                self.assertIn("INVALID_ARGUMENT", r.stderr)
                self.assertIn(needle, r.stderr)
            with open(os.path.join(d, "broken.json"), "w") as f:
                f.write("{not json")
            r = run(os.path.join(d, "broken.json"), os.path.join(d, "o"), os.path.join(d, "c"),
                    check=False)
            self.assertEqual(r.returncode, 1)
            self.assertIn("malformed JSON", r.stderr)

    def test_any_loadable_model_and_a_safetensors_dataset(self):
        sys.path.insert(0, os.path.join(ROOT, "tests", "reference"))
        import torch
        import vit_reference as ref
        config = dict(architecture="vit", img_size=16, patch_size=4, in_chans=3, embed_dim=24,
                      depth=2, num_heads=3, mlp_ratio=2.0, num_classes=4, global_pool="avg",
                      qkv_bias=False, layer_norm_eps=1e-6, mean=[0.5, 0.5, 0.5],
                      std=[0.25, 0.25, 0.25])
        with tempfile.TemporaryDirectory() as d:
            tensors = ref.random_model(config, seed=5, class_token=False, fc_norm=True)
            ref.write_safetensors(os.path.join(d, "model.safetensors"), tensors)
            with open(os.path.join(d, "config.json"), "w") as f:
                json.dump(config, f)
            torch.manual_seed(6)
            ref.write_safetensors(os.path.join(d, "data.safetensors"),
                                  {"images": torch.rand(96, 3, 16, 16),
                                   "labels": torch.randint(0, 4, (96,), dtype=torch.int64)})
            s = spec(d, "s.json", model={"config": "config.json", "weights": "model.safetensors"},
                     calibration={"source": "data.safetensors", "count": 32, "seed": 1},
                     validation={"source": "data.safetensors", "limit": 0},
                     search={"weight_methods": ["rtn", "gptq", "erq"], "weight_bits": [3, 4, 8],
                             "activation_bits": [8],
                             "softmax_quantizers": ["uniform", "log_sqrt2", "twin_uniform"]},
                     objective={"avg_weight_bits": 5.0})
            r = run(s, os.path.join(d, "out"), os.path.join(d, "cache"))
            m = json.loads(r.stdout)
            self.assertEqual(m["validation_images"], 96)
            self.assertLessEqual(m["avg_weight_bits"], 5.0 + 1e-9)
            self.assertEqual(m["evaluations_failed"], 0)
            # 2 blocks × 4 linears + patch embed + head, 9 candidates each; q·kᵀ 1, softmax·v 3.
            self.assertEqual(m["candidates"], 10 * 9 + 2 * (1 + 3))

    @main_suite_only
    def test_every_family_searches_and_reports_a_disjoint_test_set(self):
        for name in ("deit_distilled", "vit_reg_tokens_no_embed_class_bf16",
                     "swin_shifted_windows"):
            with self.subTest(family=name), tempfile.TemporaryDirectory() as d:
                config = write_family(d, name, seed=7)
                common = dict(
                    model={"config": "config.json", "weights": "model.safetensors"},
                    calibration={"source": "data.safetensors[:48]", "count": 32, "seed": 1},
                    # Calibration and validation may share images; the test set may not.
                    validation={"source": "data.safetensors[24:72]"},
                    search={"weight_methods": ["rtn", "gptq", "erq"], "weight_bits": [3, 4, 8],
                            "activation_bits": [8]},
                    objective={"avg_weight_bits": 5.0})
                s = spec(d, "s.json", test={"source": "data.safetensors[72:]"}, **common)
                r = run(s, os.path.join(d, "out"), os.path.join(d, "cache"))
                m = json.loads(r.stdout)
                self.assertEqual(m["evaluations_failed"], 0)
                self.assertLessEqual(m["avg_weight_bits"], 5.0 + 1e-9)
                self.assertEqual((m["validation_images"], m["test_images"]), (48, 24))
                # Progress names the float passes' images while preparing (48 + 32), then the test.
                self.assertIn("prepare: 80/80 (100%)", r.stderr)
                self.assertIn("test: 1/1 (100%)", r.stderr)
                # The recipe's test top-1 is what replaying it with `qsearch quantize` measures
                # on the test slice, with the same calibration draw.
                q = replay(d)
                self.assertEqual(q.returncode, 0, q.stderr)
                self.assertEqual(json.loads(q.stdout)["quant_top1"], m["test_top1"])
                # The float model's test top-1 is what `qsearch eval` measures on those images.
                e = subprocess.run([QSEARCH, "eval", "--config", os.path.join(d, "config.json"),
                                    "--weights", os.path.join(d, "model.safetensors"),
                                    "--data", os.path.join(d, "data.safetensors[72:]"), "--json"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                self.assertEqual(e.returncode, 0, e.stderr)
                self.assertEqual(json.loads(e.stdout)["top1"], m["fp32_test_top1"])
                # A test set that shares images with validation is refused, naming both.
                bad = spec(d, "bad.json", test={"source": "data.safetensors[60:]"}, **common)
                r = run(bad, os.path.join(d, "out2"), os.path.join(d, "cache"), check=False)
                self.assertEqual(r.returncode, 1)
                self.assertIn("INVALID_ARGUMENT", r.stderr)
                self.assertIn("share 12", r.stderr)
                self.assertIn("validation", r.stderr)

    @main_suite_only
    def test_nuclear_ranking_measures_what_the_cache_lacks_then_reuses_it(self):
        # Liu et al.'s nuclear-norm sensitivity: asked for, it is measured even for candidates
        # the cache holds by noise ratio, stored with them, and then reused.
        with tempfile.TemporaryDirectory() as d:
            cache = os.path.join(d, "cache")
            search = {"weight_methods": ["rtn"], "weight_bits": [2, 3, 4, 8],
                      "activation_bits": [8]}
            plain = spec(d, "plain.json", search=search, objective={"avg_weight_bits": 3.0})
            nuclear = spec(d, "nuclear.json", search=search,
                           objective={"avg_weight_bits": 3.0, "metric": "nuclear"})
            first = json.loads(run(plain, os.path.join(d, "o1"), cache).stdout)
            self.assertEqual(first["evaluations_from_cache"], 0)
            by_nuclear = json.loads(run(nuclear, os.path.join(d, "o2"), cache).stdout)
            self.assertEqual(by_nuclear["evaluations_from_cache"], 0)  # all lacked it
            self.assertEqual(by_nuclear["evaluations_failed"], 0)
            self.assertLessEqual(by_nuclear["avg_weight_bits"], 3.0 + 1e-9)
            again = json.loads(run(nuclear, os.path.join(d, "o3"), cache).stdout)
            self.assertEqual(again["evaluations"], 0)  # evaluated now: none
            self.assertEqual(again["evaluations_from_cache"], by_nuclear["evaluations"])
            self.assertEqual(again["quant_top1"], by_nuclear["quant_top1"])
            # And the noise-ratio job finds everything it needs in the richer entries.
            back = json.loads(run(plain, os.path.join(d, "o4"), cache).stdout)
            self.assertEqual(back["evaluations"], 0)
            stored = []
            for root, _, files in os.walk(os.path.join(cache, "evaluations")):
                for f in files:
                    with open(os.path.join(root, f)) as h:
                        stored.append(json.load(h))
            self.assertTrue(stored)
            self.assertTrue(all(e["nuclear_error"] > 0 for e in stored if not e["error"]))

    def test_reparam_in_the_candidate_space_replays_with_quantize(self):
        # RepQ-ViT reparameterization searched per site on a shifted-window Swin at 6-bit
        # activations: chosen only where it applies, and the recipe replays to the same test
        # top-1 through `qsearch quantize`, which folds it the same way.
        with tempfile.TemporaryDirectory() as d:
            write_family(d, "swin_shifted_windows", seed=8)
            s = spec(d, "s.json", model={"config": "config.json", "weights": "model.safetensors"},
                     calibration={"source": "data.safetensors[:48]", "count": 32, "seed": 1},
                     validation={"source": "data.safetensors[24:72]"},
                     test={"source": "data.safetensors[72:]"},
                     search={"weight_methods": ["rtn", "erq"], "weight_bits": [4, 8],
                             "activation_bits": [6], "reparam": [False, True]},
                     objective={"avg_weight_bits": 6.0})
            r = run(s, os.path.join(d, "out"), os.path.join(d, "cache"))
            m = json.loads(r.stdout)
            self.assertEqual(m["evaluations_failed"], 0)
            with open(os.path.join(d, "out", "recipe.json")) as f:
                recipe = json.load(f)
            chosen = {site for site, c in recipe["sites"].items() if c.get("reparam")}
            self.assertTrue(chosen, "no site chose reparam")
            for site in chosen:
                self.assertRegex(site, r"\.(attn\.qkv|mlp\.fc1|attn\.av_matmul)$")
            self.assertIn("reparam", json.dumps(recipe["search"]))
            q = replay(d)
            self.assertEqual(q.returncode, 0, q.stderr)
            replayed = json.loads(q.stdout)
            self.assertEqual(replayed["quant_top1"], m["test_top1"])
            self.assertEqual({p["site"] for p in replayed["per_site"] if p["reparam"]}, chosen)

    @main_suite_only
    def test_nonlinear_methods_in_the_candidate_space_choose_as_mixed_and_replay(self):
        # I-BERT, FQ-ViT and I-ViT offered at every Softmax, GELU and LayerNorm, with W8A8 the
        # only linear choice: non-linear sites cost no weight bits, so each takes its least-loss
        # method, which is `quantize w8a8 --nonlinear mixed`'s choice from the same calibration
        # images; that command is then the search's recipe and gives its test top-1.
        with tempfile.TemporaryDirectory() as d:
            s = spec(d, "s.json",
                     validation={"source": "fashion-mnist:test[:200]"},
                     test={"source": "fashion-mnist:test[200:400]"},
                     search={"weight_methods": ["rtn"], "weight_bits": [8],
                             "activation_bits": [8],
                             "nonlinear_methods": ["ibert", "fqvit", "ivit"]},
                     objective={"avg_weight_bits": 8.0})
            r = run(s, os.path.join(d, "out"), os.path.join(d, "cache"))
            m = json.loads(r.stdout)
            self.assertEqual(m["evaluations_failed"], 0)
            # 26 linear and matmul sites, 17 non-linear: 9 LayerNorms and 4 softmaxes with three
            # methods, 4 GELUs with two (FQ-ViT has no GELU kernel).
            self.assertEqual(m["candidates"], 26 + 13 * 3 + 4 * 2)
            with open(os.path.join(d, "out", "recipe.json")) as f:
                recipe = json.load(f)
            nonlinear = {site: c["nonlinear"] for site, c in recipe["sites"].items()
                         if "nonlinear" in c}
            self.assertEqual(len(nonlinear), 17)
            for site, c in nonlinear.items():
                self.assertIn(c["method"], ["ibert", "fqvit", "ivit"], site)
                self.assertEqual(c["bits"], 8, site)
                if site.endswith("mlp.act"):
                    self.assertNotEqual(c["method"], "fqvit", site)
            mixed = subprocess.run(
                [QSEARCH, "quantize", "--config", os.path.join(ROOT, "tests/data/fixture/config.json"),
                 "--weights", os.path.join(ROOT, "tests/data/fixture/model.safetensors"),
                 "--recipe", "w8a8", "--nonlinear", "mixed", "--calib-count", "64",
                 "--seed", "0", "--eval", "fashion-mnist:test[200:400]",
                 "--out", os.path.join(d, "mixed"), "--json"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            self.assertEqual(mixed.returncode, 0, mixed.stderr)
            replayed = json.loads(mixed.stdout)
            per_site = {p["site"]: p for p in replayed["per_site"]}
            self.assertEqual({site: p["nonlinear"] for site, p in per_site.items()
                              if "nonlinear" in p}, nonlinear)
            for site in nonlinear:
                self.assertIsNotNone(per_site[site]["sqnr_db"], site)  # integer, not float
            self.assertEqual(replayed["quant_top1"], m["test_top1"])

    @main_suite_only
    def test_reconstruction_tier_refines_the_chosen_mix_and_replays(self):
        # MGRQ as the reconstruction tier: the candidates (RTN, GPTQ at 3 and 4 bits) choose the
        # bits exactly as the same search without the tier does (it shares the cache and
        # evaluates nothing), the validated mix is reconstructed, and the returned recipe replays
        # through `qsearch quantize` to the validated top-1.
        with tempfile.TemporaryDirectory() as d:
            search = {"weight_methods": ["rtn", "gptq"], "weight_bits": [3, 4],
                      "activation_bits": [6]}
            accuracy = {"max_validations": 1}
            tier = {"method": "mgrq", "recon_iterations": 30, "recon_seed": 3}
            plain = spec(d, "plain.json", search=search, accuracy=accuracy,
                         objective={"avg_weight_bits": 3.5})
            tiered = spec(d, "tiered.json", search=dict(search, reconstruction=tier),
                          accuracy=accuracy, objective={"avg_weight_bits": 3.5})
            cache = os.path.join(d, "cache")
            m_plain = json.loads(run(plain, os.path.join(d, "plain"), cache).stdout)
            out = os.path.join(d, "out")
            m = json.loads(run(tiered, out, cache).stdout)
            self.assertEqual(m["evaluations"], 0)  # the tier adds no candidate
            self.assertEqual(m["candidates"], m_plain["candidates"])
            self.assertGreater(m["reconstruction"]["seconds"], 0)
            self.assertEqual(m["reconstruction"]["method"], "mgrq")
            recipes = {}
            for name in ("plain", "out"):
                with open(os.path.join(d, name, "recipe.json")) as f:
                    recipes[name] = json.load(f)
            weights = {site: c["weight"] for site, c in recipes["out"]["sites"].items()
                       if c.get("weight", {}).get("bits", 0) > 0}
            self.assertEqual(len(weights), 18)  # every linear site of the fixture
            for site, w in weights.items():
                self.assertEqual(w["method"], "mgrq", site)
                self.assertEqual(w["recon_iterations"], 30, site)
                self.assertEqual(w["recon_seed"], 3, site)
                self.assertEqual(w["bits"], recipes["plain"]["sites"][site]["weight"]["bits"], site)
            q = replay_single_stream(os.path.join(ROOT, "tests/data/fixture"),
                                     os.path.join(out, "recipe.json"), os.path.join(d, "replay"))
            self.assertEqual(q.returncode, 0, q.stderr)
            replayed = json.loads(q.stdout)
            self.assertEqual(replayed["quant_top1"], m["quant_top1"])
            stages = replayed["reconstruction"]
            self.assertEqual([r["stage"] for r in stages],
                             ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"])
            for r in stages:
                self.assertEqual(r["method"], "mgrq")
                if r["kept"]:
                    self.assertLess(r["objective_after"], r["objective_before"], r["stage"])

    @main_suite_only
    def test_repvgg_conv_sites_search_with_repapq_and_replay(self):
        # The RepVGG fixture: every fused conv is a site of the candidate space, RTN and RepAPQ
        # compete at 4 and 8 bits, and the chosen recipe (across-block calibration included)
        # replays through `qsearch quantize` to the accuracy the search validated.
        repvgg = os.path.join(ROOT, "tests/data/repvgg")
        with tempfile.TemporaryDirectory() as d:
            s = spec(d, "s.json",
                     model={"config": os.path.join(repvgg, "config.json"),
                            "weights": os.path.join(repvgg, "model.safetensors")},
                     search={"weight_methods": ["rtn", "repapq"], "weight_bits": [4, 8],
                             "activation_bits": [6]},
                     objective={"avg_weight_bits": 6.0},
                     accuracy={"max_abs_top1_drop": 0.01, "max_validations": 1})
            out = os.path.join(d, "out")
            m = json.loads(run(s, out, os.path.join(d, "cache")).stdout)
            self.assertEqual(m["evaluations_failed"], 0)
            self.assertEqual(m["candidates"], 8 * 2 * 2)
            self.assertLessEqual(m["avg_weight_bits"], 6.0)
            with open(os.path.join(out, "recipe.json")) as f:
                recipe = json.load(f)
            convs = {"stem.reparam_conv", "stages.0.0.reparam_conv", "stages.0.1.reparam_conv",
                     "stages.1.0.reparam_conv", "stages.1.1.reparam_conv",
                     "stages.1.2.reparam_conv", "stages.2.0.reparam_conv"}
            self.assertEqual(set(recipe["sites"]), convs | {"head.fc"})
            methods = {c["weight"]["method"] for c in recipe["sites"].values()}
            self.assertIn("repapq", methods)
            q = replay_single_stream(repvgg, os.path.join(out, "recipe.json"),
                                     os.path.join(d, "replay"))
            self.assertEqual(q.returncode, 0, q.stderr)
            self.assertEqual(json.loads(q.stdout)["quant_top1"], m["quant_top1"])

    @unittest.skipUnless(CHROMIUM, "chromium is not installed (scripts/setup.sh installs it)")
    @main_suite_only
    def test_report_renders_in_headless_chromium(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "out")
            run(spec(d, "s.json"), out, os.path.join(d, "cache"))
            flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--user-data-dir=" + os.path.join(d, "profile")]
            url = "file://" + os.path.join(out, "report.html")
            dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", url], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, timeout=120).stdout
            self.assertIn('id="pareto"', dom)
            self.assertIn("chosen-point", dom)
            self.assertEqual(dom.count('class="site"') >= 26, True)
            shot = os.path.join(d, "report.png")
            subprocess.run([CHROMIUM, *flags, "--screenshot=" + shot, "--window-size=1000,1400",
                            url], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
            self.assertTrue(os.path.exists(shot) and os.path.getsize(shot) > 10000)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import testlib
    testlib.main(sys.modules[__name__])
