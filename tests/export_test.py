#!/usr/bin/python3
"""The exports other tools load (docs/export.md), checked by other tools.

- onnx-qdq: Debian's python3-onnx checker (full check) passes on the fixture at W8A8, W4A8 and a
  searched mix, and ONNX Runtime (onnxruntime-node, tests/export/run_onnx.mjs) on the test images
  gives qsearch's quantized top-1 to within 0.1 point and the same prediction on >= 99% of them.
- safetensors-fakequant: model.safetensors loads into the independent PyTorch ViT of
  tests/reference/vit_reference.py (strict), and with encodings.json applied at each site it
  reproduces qsearch's quantized logits to 1e-4.
- safetensors-packed: a reader written from docs/export.md's spec alone (here, in Python) unpacks
  weights.safetensors to the fake-quant tensors exactly.

  /usr/bin/python3 tests/export_test.py --qsearch build/qsearch [-k NAME]
"""
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "reference"))
import testlib  # noqa: E402
import vit_reference as ref  # noqa: E402

QSEARCH = "build/qsearch"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests/data/fixture")
CONFIG = os.path.join(FIXTURE, "config.json")
WEIGHTS = os.path.join(FIXTURE, "model.safetensors")
RUNNER = os.path.join(ROOT, "tests/export/run_onnx.mjs")
# Test images compared: the first N of a balanced draw of the Fashion-MNIST test set.
IMAGES = int(os.environ.get("QS_EXPORT_TEST_IMAGES", "2000"))


def run(*args):
    p = subprocess.run(list(args), capture_output=True, text=True)
    if p.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
    return p.stdout


def load_json(path):
    with open(path) as f:
        return json.load(f)


def fake_quant(x, enc):
    """encodings.json's uniform grid: (clamp(round(x/s) + z, qmin, qmax) - z) * s."""
    assert enc["quantizer"] == "uniform", enc["quantizer"]
    shape = enc["shape"] if enc["shape"] else [1]
    s = torch.tensor(enc["scale"], dtype=torch.float32).reshape(shape)
    z = torch.tensor(enc["zero_point"], dtype=torch.float32).reshape(shape)
    return (torch.clamp(torch.round(x / s) + z, enc["qmin"], enc["qmax"]) - z) * s


def apply_encodings(model, encodings):
    """Fake-quantizes the reference model's site operands as encodings.json says."""
    acts = encodings["activation_encodings"]
    for name, module in model.named_modules():
        if name in acts and "input" in acts[name]:
            enc = acts[name]["input"]
            if isinstance(module, torch.nn.Conv2d) and len(enc["scale"]) != 1:
                raise AssertionError("a per-channel patch input needs the unfolded patches")
            module.register_forward_pre_hook(lambda m, args, e=enc: (fake_quant(args[0], e),))
        if isinstance(module, ref.Attention):
            qk, av = acts.get(name + ".qk_matmul", {}), acts.get(name + ".av_matmul", {})

            def forward(x, m=module, qk=qk, av=av):
                q_ = (lambda t, o, ops: fake_quant(t, ops[o]) if o in ops else t)
                b, n, d = x.shape
                qkv = m.qkv(x).reshape(b, n, 3, m.heads, d // m.heads).permute(2, 0, 3, 1, 4)
                q, k, v = qkv.unbind(0)
                # qsearch's site order: q is scaled before it is quantized (encodings "operands").
                q = q * (d // m.heads) ** -0.5
                attn = q_(q, "lhs", qk) @ q_(k.transpose(-2, -1), "rhs", qk)
                ctx = q_(attn.softmax(-1), "lhs", av) @ q_(v, "rhs", av)
                return m.proj(ctx.transpose(1, 2).reshape(b, n, d))

            module.forward = forward
    return model


def read_packed(path):
    """docs/export.md's "qsearch.quantized.v1" reader: every tensor as float32, by timm name."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__")
    assert meta["format"] == "qsearch.quantized.v1"
    tensors = ref.read_safetensors(path)
    out = {}
    layout = json.loads(meta["layout"])
    for site, l in layout.items():
        rows, cols = l["shape"]
        bits, qmin, group = l["bits"], l["qmin"], l["group_size"]
        raw = tensors.pop(site + ".weight.codes").to(torch.int64)
        # LSB first: bit j of the stream is bit (j % 8) of byte j // 8.
        stream = ((raw.unsqueeze(1) >> torch.arange(8)) & 1).reshape(-1)
        idx = torch.arange(rows * cols).unsqueeze(1) * bits + torch.arange(bits)
        codes = (stream[idx] << torch.arange(bits)).sum(1) + qmin
        scale = tensors.pop(site + ".weight.scale")
        zero = tensors.pop(site + ".weight.zero_point", torch.zeros(1)).to(torch.float32)

        def expand(t):
            if t.numel() == 1:
                return t.reshape(())
            return t.repeat_interleave(group, 1)[:, :cols] if t.shape[1] > 1 else t

        w = (codes.reshape(rows, cols).to(torch.float32) - expand(zero)) * expand(scale)
        out[l["weight"]] = w.reshape(l["weight_shape"])
    out.update({k: v.to(torch.float32) for k, v in tensors.items()})
    return out


class ExportTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = cls.tmp.name
        cls.config = load_json(CONFIG)
        raw = os.path.join(cls.dir, "images.safetensors")
        run(QSEARCH, "images", "--config", CONFIG, "--data", "fashion-mnist:test",
            "--limit", str(IMAGES), "--dump", raw)
        data = ref.read_safetensors(raw)
        cls.labels = data["labels"]
        cls.images = os.path.join(cls.dir, "normalized.safetensors")
        ref.write_safetensors(cls.images,
                              {"images": ref.normalize(data["images"], cls.config).contiguous()})
        cls.quantized = {}

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def quantize(self, recipe, name, *extra):
        """qsearch quantize with every export and the quantized logits of the test images."""
        out = os.path.join(self.dir, name)
        run(QSEARCH, "quantize", "--config", CONFIG, "--weights", WEIGHTS, "--recipe", recipe,
            "--out", out, "--eval-limit", str(IMAGES), "--export",
            "onnx-qdq,safetensors-fakequant,safetensors-packed", "--dump-logits",
            os.path.join(out, "logits.safetensors"), *extra)
        dumped = ref.read_safetensors(os.path.join(out, "logits.safetensors"))
        self.assertTrue(torch.equal(dumped["labels"], self.labels))
        return out, dumped["logits"]

    def onnx_runtime_logits(self, model_path):
        out = model_path + ".logits.safetensors"
        line = json.loads(run("node", RUNNER, "--model", model_path, "--images", self.images,
                              "--out", out))
        self.assertEqual(line["images"], IMAGES)
        return ref.read_safetensors(out)["logits"]

    def check_onnx(self, path, logits, label):
        import onnx
        model = onnx.load(path)
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        self.assertEqual(meta["qsearch.format"], "qsearch.onnx-qdq.v1")
        ops = [n.op_type for n in model.graph.node]
        self.assertGreater(ops.count("QuantizeLinear"), 0)
        self.assertEqual(ops.count("QuantizeLinear"), ops.count("DequantizeLinear"))
        ort = self.onnx_runtime_logits(path)
        top1_qs = (logits.argmax(1) == self.labels).float().mean().item()
        top1_ort = (ort.argmax(1) == self.labels).float().mean().item()
        agree = (ort.argmax(1) == logits.argmax(1)).float().mean().item()
        print(f"\n  {label}: qsearch top-1 {100 * top1_qs:.2f}%, onnxruntime {100 * top1_ort:.2f}%, "
              f"same prediction {100 * agree:.2f}%, max |logit diff| "
              f"{(ort - logits).abs().max().item():.3g}", file=sys.stderr)
        self.assertLessEqual(abs(top1_qs - top1_ort), 0.001 + 1e-9, label)
        self.assertGreaterEqual(agree, 0.99, label)
        return meta

    def test_onnx_runtime_agrees_at_w8a8_w4a8_and_a_searched_mix(self):
        for recipe in ("w8a8", "w4a8"):
            out, logits = self.quantize(recipe, recipe)
            meta = self.check_onnx(os.path.join(out, "export/model.onnx"), logits, recipe)
            self.assertEqual(json.loads(meta["qsearch.float_nonlinear_sites"]), [])
        # A searched recipe (weight bits, methods and per-group grids mixed; 6-bit activations),
        # exported by run --export, and qsearch's logits for it from quantize with the spec's
        # calibration draw.
        search = os.path.join(self.dir, "search")
        spec = os.path.join(ROOT, "tests/data/export/mixed_search.json")
        run(QSEARCH, "run", "--spec", spec, "--out", search, "--cache",
            os.path.join(self.dir, "cache"), "--export", "onnx-qdq")
        recipe = load_json(os.path.join(search, "recipe.json"))
        weights = {(c["weight"]["method"], c["weight"]["bits"])
                   for c in recipe["sites"].values() if "weight" in c}
        self.assertGreater(len({bits for _, bits in weights}), 1, "a mix of weight widths")
        self.assertGreater(len({method for method, _ in weights}), 1, "a mix of methods")
        _, logits = self.quantize(os.path.join(search, "recipe.json"), "searched")
        self.check_onnx(os.path.join(search, "export/model.onnx"), logits, "searched mix")

    def test_integer_nonlinear_sites_stay_float_and_are_named(self):
        out = os.path.join(self.dir, "ibert")
        run(QSEARCH, "quantize", "--config", CONFIG, "--weights", WEIGHTS, "--recipe", "w8a8",
            "--out", out, "--eval-limit", "10", "--nonlinear", "ibert", "--export", "onnx-qdq")
        import onnx
        model = onnx.load(os.path.join(out, "export/model.onnx"))
        onnx.checker.check_model(model, full_check=True)
        meta = {p.key: p.value for p in model.metadata_props}
        named = json.loads(meta["qsearch.float_nonlinear_sites"])
        self.assertIn("blocks.0.attn.softmax", named)
        self.assertIn("blocks.3.mlp.act", named)
        self.assertIn("blocks.0.norm1", named)

    def test_fakequant_weights_load_into_the_reference_and_reproduce_the_logits(self):
        for recipe in ("w8a8", "w4a8", "w4a4"):
            out, logits = self.quantize(recipe, "fq_" + recipe)
            tensors = ref.read_safetensors(os.path.join(out, "export/model.safetensors"))
            model = ref.make_model(self.config)
            model.load_state_dict(tensors, strict=True)  # timm names and shapes, unchanged
            model.eval()
            encodings = load_json(os.path.join(out, "export/encodings.json"))
            quant_config = load_json(os.path.join(out, "export/quant_config.json"))
            self.assertEqual(quant_config["recipe"], load_json(os.path.join(out, "recipe.json")))
            self.assertEqual(quant_config["fitted_on"]["calibration"]["count"], 256)
            x = ref.read_safetensors(self.images)["images"]
            with torch.no_grad():
                plain = model(x)
                quantized = apply_encodings(model, encodings)(x)
            diff = (quantized - logits).abs().max().item()
            print(f"\n  {recipe}: reference with encodings vs qsearch, max |logit diff| {diff:.3g}; "
                  f"without encodings {(plain - logits).abs().max().item():.3g}", file=sys.stderr)
            self.assertLess(diff, 1e-4, recipe)
            # The encodings matter: without them the float activations give other logits.
            self.assertGreater((plain - logits).abs().max().item(), 1e-3, recipe)

    def test_packed_format_read_from_its_spec_equals_the_fakequant_tensors(self):
        out, _ = self.quantize("w3a8", "packed")
        packed = read_packed(os.path.join(out, "export/weights.safetensors"))
        fake = ref.read_safetensors(os.path.join(out, "export/model.safetensors"))
        self.assertEqual(sorted(packed), sorted(fake))
        for name in fake:
            self.assertTrue(torch.equal(packed[name], fake[name]), name)
        # run's and quantize's weights.safetensors are the same format, byte for byte.
        with open(os.path.join(out, "weights.safetensors"), "rb") as a, \
                open(os.path.join(out, "export/weights.safetensors"), "rb") as b:
            self.assertEqual(a.read(), b.read())

    def test_export_refits_from_the_recipe_and_checks_its_digests(self):
        search = os.path.join(self.dir, "search_for_export")
        spec = os.path.join(ROOT, "examples/fixture_search.json")
        run(QSEARCH, "run", "--spec", spec, "--out", search, "--cache",
            os.path.join(self.dir, "cache"))
        recipe = os.path.join(search, "recipe.json")
        out = os.path.join(self.dir, "exported")
        run(QSEARCH, "export", "--spec", spec, "--recipe", recipe, "--format",
            "safetensors-packed", "--out", out)
        # The refit gives the weights the search wrote, bit for bit.
        a, b = read_packed(os.path.join(out, "weights.safetensors")), \
            read_packed(os.path.join(search, "weights.safetensors"))
        self.assertEqual(sorted(a), sorted(b))
        for name in a:
            self.assertTrue(torch.equal(a[name], b[name]), name)
        # Another calibration draw than the search's is refused before any work.
        p = subprocess.run([QSEARCH, "export", "--config", CONFIG, "--weights", WEIGHTS,
                            "--recipe", recipe, "--format", "onnx-qdq", "--out", out,
                            "--sampling", "balanced"], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("FAILED_PRECONDITION", p.stderr)
        self.assertIn("calibration", p.stderr)
        p = subprocess.run([QSEARCH, "export", "--spec", spec, "--recipe", recipe,
                            "--format", "tflite", "--out", out], capture_output=True, text=True)
        self.assertEqual(p.returncode, 1)
        self.assertIn("INVALID_ARGUMENT", p.stderr)
        self.assertIn("tflite", p.stderr)


if __name__ == "__main__":
    testlib.main(sys.modules[__name__])
