#!/usr/bin/python3
"""Checks qsearch's FP32 forward against an independent PyTorch ViT (timm layout).

The reference is written with torch.nn modules (a real Conv2d patch embedding, nn.LayerNorm,
nn.GELU) and loads weights with strict=True, so a wrong tensor name, layout or op order in qsearch
shows up as a logit mismatch. Runs with Debian's python3-torch.

  /usr/bin/python3 tests/reference/vit_reference.py --qsearch build/qsearch
"""
import gzip
import json
import os
import struct
import subprocess
import sys
import tempfile
import unittest

import torch
from torch import nn

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F64": torch.float64, "I64": torch.int64, "I32": torch.int32, "U8": torch.uint8}
NAMES = {v: k for k, v in DTYPES.items()}
FASHION_DIR = os.environ.get("QS_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
QSEARCH = "build/qsearch"


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = bytearray(data[base + b:base + end])
        t = torch.frombuffer(buf, dtype=DTYPES[e["dtype"]]) if buf else torch.empty(0)
        out[name] = t.reshape(e["shape"]).clone()
    return out


def write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        offset += len(raw)
        blobs.append(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q @ k.transpose(-2, -1)) * (d // self.heads) ** -0.5
        return self.proj((attn.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.attn = Attention(d, c["num_heads"], c["qkv_bias"])
        self.norm2 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.mlp = Mlp(d, int(d * c["mlp_ratio"]))

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        p = c["patch_size"]
        self.proj = nn.Conv2d(c["in_chans"], c["embed_dim"], p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    def __init__(self, c, class_token=True, fc_norm=False):
        super().__init__()
        d = c["embed_dim"]
        n = (c["img_size"] // c["patch_size"]) ** 2
        self.pool = c["global_pool"]
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if class_token else None
        self.pos_embed = nn.Parameter(torch.zeros(1, n + (1 if class_token else 0), d))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["depth"]))
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.fc_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"]) if fc_norm else nn.Identity()
        self.head = nn.Linear(d, c["num_classes"])

    def forward(self, x):
        x = self.patch_embed(x)
        if self.cls_token is not None:
            x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        x = self.norm(x)
        prefix = 1 if self.cls_token is not None else 0
        x = x[:, 0] if self.pool == "token" else x[:, prefix:].mean(1)
        return self.head(self.fc_norm(x))


def build_reference(config, tensors):
    model = VisionTransformer(config, class_token="cls_token" in tensors,
                              fc_norm="fc_norm.weight" in tensors)
    model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    return model.eval()


def normalize(images, config):
    mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["std"]).view(1, -1, 1, 1)
    return (images - mean) / std


def fashion_test_images(limit):
    with gzip.open(os.path.join(FASHION_DIR, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        data = f.read()
    n, rows, cols = struct.unpack(">III", data[4:16])
    raw = torch.frombuffer(bytearray(data[16:]), dtype=torch.uint8).reshape(n, 1, rows, cols)
    return raw[:limit].float() / 255.0


def qsearch_logits(config_path, weights_path, data, limit, workdir):
    out = os.path.join(workdir, "logits.safetensors")
    cmd = [QSEARCH, "eval", "--config", config_path, "--weights", weights_path, "--data", data,
           "--limit", str(limit), "--dump-logits", out, "--json"]
    subprocess.run(cmd, check=True, stdout=subprocess.PIPE)
    return read_safetensors(out)["logits"]


def random_model(config, seed, class_token=True, fc_norm=False, dtype=torch.float32):
    torch.manual_seed(seed)
    model = VisionTransformer(config, class_token=class_token, fc_norm=fc_norm)
    tensors = {}
    for name, p in model.state_dict().items():
        scale = 0.2 if p.dim() >= 2 else 0.05
        base = 1.0 if name.endswith("norm1.weight") or name.endswith("norm2.weight") else 0.0
        tensors[name] = (base + torch.randn(p.shape) * scale).to(dtype)
    return tensors


class ReferenceForwardTest(unittest.TestCase):
    def compare(self, config, tensors, images, data_source, workdir, limit):
        ref = build_reference(config, tensors)
        with torch.no_grad():
            expected = ref(normalize(images, config))
        config_path = os.path.join(workdir, "config.json")
        weights_path = os.path.join(workdir, "model.safetensors")
        with open(config_path, "w") as f:
            json.dump(config, f)
        write_safetensors(weights_path, tensors)
        got = qsearch_logits(config_path, weights_path, data_source, limit, workdir)
        self.assertEqual(tuple(got.shape), tuple(expected.shape))
        diff = (got - expected).abs().max().item()
        self.assertLessEqual(diff, 1e-4, f"max |logit difference| {diff}")
        self.assertTrue(torch.equal(got.argmax(-1), expected.argmax(-1)))
        return diff

    def test_fixture_on_fashion_mnist(self):
        with open("tests/data/fixture/config.json") as f:
            config = json.load(f)
        tensors = read_safetensors("tests/data/fixture/model.safetensors")
        with tempfile.TemporaryDirectory() as d:
            self.compare(config, tensors, fashion_test_images(512), "fashion-mnist:test", d, 512)

    def test_other_shapes_and_dtypes(self):
        variants = [
            # (config overrides, class token, fc_norm, dtype)
            (dict(img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=3, num_heads=3,
                  mlp_ratio=4.0, num_classes=7, global_pool="avg", qkv_bias=False,
                  mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
             True, True, torch.float32),
            (dict(img_size=24, patch_size=6, in_chans=2, embed_dim=40, depth=2, num_heads=5,
                  mlp_ratio=3.0, num_classes=4, global_pool="token", qkv_bias=True,
                  mean=[0.5, 0.4], std=[0.3, 0.2]),
             True, False, torch.float16),
            (dict(img_size=16, patch_size=4, in_chans=1, embed_dim=32, depth=1, num_heads=2,
                  mlp_ratio=2.0, num_classes=3, global_pool="avg", qkv_bias=True,
                  mean=[0.5], std=[0.5]),
             False, False, torch.bfloat16),
        ]
        for i, (overrides, cls, fcn, dtype) in enumerate(variants):
            config = dict(architecture="vit", layer_norm_eps=1e-6, **overrides)
            tensors = random_model(config, seed=i, class_token=cls, fc_norm=fcn, dtype=dtype)
            torch.manual_seed(100 + i)
            c, s = config["in_chans"], config["img_size"]
            images = torch.rand(40, c, s, s)
            with tempfile.TemporaryDirectory() as d:
                data_path = os.path.join(d, "data.safetensors")
                write_safetensors(data_path, {"images": images,
                                              "labels": torch.zeros(40, dtype=torch.int64)})
                with self.subTest(variant=i):
                    self.compare(config, tensors, images, data_path, d, 0)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import testlib
    testlib.main(sys.modules[__name__])
