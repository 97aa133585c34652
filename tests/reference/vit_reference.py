#!/usr/bin/python3
"""Checks qsearch's FP32 forward against an independent PyTorch ViT (timm layout).

The reference is written with torch.nn modules (a real Conv2d patch embedding, nn.LayerNorm,
nn.GELU) and loads weights with strict=True, so a wrong tensor name, layout or op order in qsearch
shows up as a logit mismatch. Runs with Debian's python3-torch.

It follows timm's code for each family of docs/checkpoints.md: ViT/DeiT with distillation token,
LayerScale, register tokens and no_embed_class (timm/models/vision_transformer.py, deit.py), and
Swin (timm/models/swin_transformer.py, timm >= 0.9 layout). FamilyReferenceTest compares qsearch
with it per family; ReferenceSelfCheckTest checks the reference itself (tensor names and shapes
against the schema, Swin's windows against a brute-force attention, its shift mask against the
region rule); TimmCrossCheckTest compares it with timm's own modules where timm can be imported
(QS_TIMM_PATH=<pytorch-image-models checkout>), and is skipped otherwise.

  /usr/bin/python3 tests/reference/vit_reference.py --qsearch build/qsearch [TestClass[.test]]
"""
import gzip
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import zlib

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


class LayerScale(nn.Module):
    """timm.layers.LayerScale: a per-channel gamma [D] on the residual branch."""

    def __init__(self, dim):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        d = c["embed_dim"]
        self.norm1 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.attn = Attention(d, c["num_heads"], c["qkv_bias"])
        self.norm2 = nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.mlp = Mlp(d, int(d * c["mlp_ratio"]))
        # timm's Block: `LayerScale(...) if init_values else nn.Identity()`: 0 means none too.
        scaled = bool(c.get("init_values"))
        self.ls1 = LayerScale(d) if scaled else nn.Identity()
        self.ls2 = LayerScale(d) if scaled else nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        p = c["patch_size"]
        self.proj = nn.Conv2d(c["in_chans"], c["embed_dim"], p, stride=p)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class VisionTransformer(nn.Module):
    """timm's VisionTransformer: class token, register tokens, no_embed_class, LayerScale, token or
    avg pooling with norm or fc_norm."""

    def __init__(self, c, class_token=True, fc_norm=False):
        super().__init__()
        d = c["embed_dim"]
        n = (c["img_size"] // c["patch_size"]) ** 2
        reg_tokens = c.get("reg_tokens", 0)
        self.pool = c["global_pool"]
        self.no_embed_class = c.get("no_embed_class", False)
        self.num_prefix_tokens = (1 if class_token else 0) + reg_tokens
        self.patch_embed = PatchEmbed(c)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d)) if class_token else None
        self.reg_token = nn.Parameter(torch.zeros(1, reg_tokens, d)) if reg_tokens else None
        embed_len = n if self.no_embed_class else n + self.num_prefix_tokens
        self.pos_embed = nn.Parameter(torch.zeros(1, embed_len, d))
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["depth"]))
        self.norm = nn.Identity() if fc_norm else nn.LayerNorm(d, eps=c["layer_norm_eps"])
        self.fc_norm = nn.LayerNorm(d, eps=c["layer_norm_eps"]) if fc_norm else nn.Identity()
        self.head = nn.Linear(d, c["num_classes"])

    def _pos_embed(self, x):
        # timm VisionTransformer._pos_embed: prefix tokens [cls, reg_1..reg_R] before the patches;
        # no_embed_class adds pos_embed to the patches only, before the concatenation.
        b = x.shape[0]
        to_cat = []
        if self.cls_token is not None:
            to_cat.append(self.cls_token.expand(b, -1, -1))
        if self.reg_token is not None:
            to_cat.append(self.reg_token.expand(b, -1, -1))
        if self.no_embed_class:
            x = x + self.pos_embed
            return torch.cat(to_cat + [x], dim=1) if to_cat else x
        if to_cat:
            x = torch.cat(to_cat + [x], dim=1)
        return x + self.pos_embed

    def forward_features(self, x):
        x = self._pos_embed(self.patch_embed(x))
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward_head(self, x):
        # timm global_pool_nlc: 'token' takes x[:, 0]; 'avg' averages the patch tokens only.
        x = x[:, 0] if self.pool == "token" else x[:, self.num_prefix_tokens:].mean(1)
        return self.head(self.fc_norm(x))

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class VisionTransformerDistilled(VisionTransformer):
    """timm.models.deit.VisionTransformerDistilled: tokens [cls, dist, patches], pos_embed over all
    N + 2, inference logits (head(x[:, 0]) + head_dist(x[:, 1])) / 2.

    timm defines no register tokens or no_embed_class for it (its _pos_embed never concatenates
    reg_token, and with no_embed_class its N + 2 pos_embed cannot be added to the N patches), and it
    asserts global_pool == 'token'; those combinations are refused here."""

    def __init__(self, c, class_token=True, fc_norm=False):
        if not class_token or fc_norm or c["global_pool"] != "token":
            raise ValueError("distilled needs a class token and global_pool 'token' (as timm)")
        if c.get("reg_tokens", 0) or c.get("no_embed_class", False):
            raise ValueError("timm's VisionTransformerDistilled has no reg_tokens/no_embed_class")
        super().__init__(c, class_token=True, fc_norm=False)
        d = c["embed_dim"]
        n = (c["img_size"] // c["patch_size"]) ** 2
        self.num_prefix_tokens = 2
        self.dist_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 2, d))
        self.head_dist = nn.Linear(d, c["num_classes"])

    def _pos_embed(self, x):
        b = x.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), self.dist_token.expand(b, -1, -1), x), 1)
        return x + self.pos_embed

    def forward_head(self, x):
        return (self.head(x[:, 0]) + self.head_dist(x[:, 1])) / 2


# ---- Swin (timm >= 0.9 layout: NHWC, PatchMerging at the start of stages 1.., head.fc) ----

def window_partition(x, w):
    """[B, H, W, C] -> [B * nW, w, w, C], windows in row-major order (timm window_partition)."""
    b, h, wd, c = x.shape
    x = x.view(b, h // w, w, wd // w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, w, w, c)


def window_reverse(windows, w, h, wd):
    """Inverse of window_partition (timm window_reverse)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // w, wd // w, w, w, c)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, h, wd, c)


def relative_position_index(w):
    """[w*w, w*w] index into the [(2w-1)^2, heads] bias table (timm get_relative_position_index)."""
    coords = torch.stack(torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij"))
    flat = coords.flatten(1)
    rel = (flat[:, :, None] - flat[:, None, :]).permute(1, 2, 0).contiguous()
    rel[:, :, 0] += w - 1
    rel[:, :, 1] += w - 1
    rel[:, :, 0] *= 2 * w - 1
    return rel.sum(-1)


def shifted_window_mask(res, w, shift):
    """[nW, w*w, w*w]: 0 within a region, -100 across (timm SwinTransformerBlock.get_attn_mask)."""
    img_mask = torch.zeros(1, res, res, 1)
    cnt = 0
    for h in ((0, -w), (-w, -shift), (-shift, None)):
        for v in ((0, -w), (-w, -shift), (-shift, None)):
            img_mask[:, h[0]:h[1], v[0]:v[1], :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, w).view(-1, w * w)
    mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return mask.masked_fill(mask != 0, -100.0).masked_fill(mask == 0, 0.0)


class WindowAttention(nn.Module):
    def __init__(self, dim, heads, w, qkv_bias):
        super().__init__()
        self.heads = heads
        self.window_area = w * w
        self.scale = (dim // heads) ** -0.5
        self.relative_position_bias_table = nn.Parameter(torch.zeros((2 * w - 1) ** 2, heads))
        self.register_buffer("relative_position_index", relative_position_index(w),
                             persistent=False)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def rel_pos_bias(self):
        n = self.window_area
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1).contiguous().unsqueeze(0)  # [1, heads, N, N]

    def forward(self, x, mask=None):
        b, n, c = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1) + self.rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.heads, n, n)
        x = attn.softmax(-1) @ v
        return self.proj(x.transpose(1, 2).reshape(b, n, -1))


class SwinBlock(nn.Module):
    def __init__(self, c, dim, res, heads, shift):
        super().__init__()
        # timm _calc_window_shift (always_partition False): a stage no larger than the window
        # attends over the whole grid (window = resolution) without shift.
        target = c["window_size"]
        self.window = res if res <= target else target
        self.shift = 0 if res <= self.window else shift
        if res % self.window:
            raise ValueError("timm pads here; the qsearch schema has no padding")
        eps = c["layer_norm_eps"]
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = WindowAttention(dim, heads, self.window, c["qkv_bias"])
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, int(dim * c["mlp_ratio"]))
        mask = shifted_window_mask(res, self.window, self.shift) if self.shift else None
        self.register_buffer("attn_mask", mask, persistent=False)

    def window_attention(self, x):
        b, h, wd, c = x.shape
        s, w = self.shift, self.window
        shifted = torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s else x
        windows = window_partition(shifted, w).view(-1, w * w, c)
        out = self.attn(windows, mask=self.attn_mask).view(-1, w, w, c)
        shifted = window_reverse(out, w, h, wd)
        return torch.roll(shifted, shifts=(s, s), dims=(1, 2)) if s else shifted

    def forward(self, x):
        b, h, wd, c = x.shape
        x = x + self.window_attention(self.norm1(x))
        x = x.reshape(b, -1, c)
        x = x + self.mlp(self.norm2(x))
        return x.reshape(b, h, wd, c)


class PatchMerging(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=eps)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        b, h, w, c = x.shape
        x = x.reshape(b, h // 2, 2, w // 2, 2, c).permute(0, 1, 3, 4, 2, 5).flatten(3)
        return self.reduction(self.norm(x))


class SwinStage(nn.Module):
    def __init__(self, c, index):
        super().__init__()
        dim = c["embed_dim"] * 2 ** index
        res = (c["img_size"] // c["patch_size"]) // 2 ** index
        heads = c["num_heads"][index]
        self.downsample = PatchMerging(dim // 2, c["layer_norm_eps"]) if index else nn.Identity()
        shift = c["window_size"] // 2
        self.blocks = nn.ModuleList(SwinBlock(c, dim, res, heads, 0 if j % 2 == 0 else shift)
                                    for j in range(c["depths"][index]))

    def forward(self, x):
        x = self.downsample(x)
        for blk in self.blocks:
            x = blk(x)
        return x


class SwinPatchEmbed(nn.Module):
    def __init__(self, c):
        super().__init__()
        p = c["patch_size"]
        self.proj = nn.Conv2d(c["in_chans"], c["embed_dim"], p, stride=p)
        self.norm = nn.LayerNorm(c["embed_dim"], eps=c["layer_norm_eps"])

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1))  # NCHW -> NHWC, then norm


class SwinHead(nn.Module):
    def __init__(self, dim, num_classes):
        super().__init__()
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x):
        return self.fc(x.mean((1, 2)))  # ClassifierHead, pool 'avg', input_fmt NHWC


class SwinTransformer(nn.Module):
    def __init__(self, c):
        super().__init__()
        if len(c["depths"]) != len(c["num_heads"]) or c["global_pool"] != "avg":
            raise ValueError("swin: depths and num_heads of one length, global_pool 'avg'")
        if (c["img_size"] // c["patch_size"]) % 2 ** (len(c["depths"]) - 1):
            raise ValueError("timm pads odd grids before merging; the schema has no padding")
        self.patch_embed = SwinPatchEmbed(c)
        self.layers = nn.ModuleList(SwinStage(c, i) for i in range(len(c["depths"])))
        num_features = c["embed_dim"] * 2 ** (len(c["depths"]) - 1)
        self.norm = nn.LayerNorm(num_features, eps=c["layer_norm_eps"])
        self.head = SwinHead(num_features, c["num_classes"])

    def forward(self, x):
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x))


# The schema's defaults for keys a config may leave out (the data config's are not model keys).
VIT_DEFAULTS = dict(mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-6, global_pool="token",
                    distilled=False, reg_tokens=0, no_embed_class=False, init_values=None)
SWIN_DEFAULTS = dict(mlp_ratio=4.0, qkv_bias=True, layer_norm_eps=1e-5, global_pool="avg")


def resolve(config):
    """The config with the schema's defaults filled in."""
    out = dict(SWIN_DEFAULTS if config["architecture"] == "swin" else VIT_DEFAULTS)
    out.update(config)
    return out


def make_model(config, class_token=True, fc_norm=False):
    c = resolve(config)
    if c["architecture"] == "swin":
        return SwinTransformer(c)
    if c["architecture"] not in ("vit", "deit"):
        raise ValueError(f"unknown architecture {c['architecture']}")
    cls = VisionTransformerDistilled if c["distilled"] else VisionTransformer
    return cls(c, class_token=class_token, fc_norm=fc_norm)


def build_reference(config, tensors):
    model = make_model(config, class_token="cls_token" in tensors,
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
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        message = (r.stderr or r.stdout).strip()
        raise AssertionError(f"qsearch eval exited {r.returncode}: {message}")
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


class LogitComparison:
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


class ReferenceForwardTest(LogitComparison, unittest.TestCase):
    def test_fixture_on_fashion_mnist(self):
        with open("tests/data/fixture/config.json") as f:
            config = json.load(f)
        tensors = read_safetensors("tests/data/fixture/model.safetensors")
        with tempfile.TemporaryDirectory() as d:
            self.compare(config, tensors, fashion_test_images(512), "fashion-mnist:test[:512]", d, 0)

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


# ---- the families beyond the plain ViT: random models, their checks and their tests ----

IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]

# name: (config as written for qsearch, class token, fc_norm, weights dtype). Keys the schema gives
# a default are left out in some variants so that the defaults are exercised too.
FAMILY_VARIANTS = {
    "deit_distilled": (
        dict(architecture="deit", img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2,
             num_heads=3, num_classes=6, distilled=True, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        True, False, torch.float32),
    "deit_distilled_layerscale_f16": (
        dict(architecture="deit", img_size=24, patch_size=6, in_chans=2, embed_dim=32, depth=2,
             num_heads=4, mlp_ratio=3.0, qkv_bias=False, layer_norm_eps=1e-6, num_classes=5,
             global_pool="token", distilled=True, reg_tokens=0, no_embed_class=False,
             init_values=1e-5, mean=[0.5, 0.4], std=[0.3, 0.2]),
        True, False, torch.float16),
    "vit_layerscale": (
        dict(architecture="vit", img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=3,
             num_heads=3, num_classes=7, init_values=1e-5, mean=IMAGENET_MEAN, std=IMAGENET_STD),
        True, False, torch.float32),
    "deit3_no_embed_class": (  # DeiT III: pos_embed over the patches only, LayerScale
        dict(architecture="deit", img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2,
             num_heads=3, num_classes=6, no_embed_class=True, init_values=1e-6,
             mean=IMAGENET_MEAN, std=IMAGENET_STD),
        True, False, torch.float32),
    "vit_reg_tokens": (  # registers inside pos_embed: [1, 1 + 4 + 16, D]
        dict(architecture="vit", img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2,
             num_heads=3, num_classes=6, reg_tokens=4, no_embed_class=False,
             mean=IMAGENET_MEAN, std=IMAGENET_STD),
        True, False, torch.float32),
    "vit_reg_tokens_no_embed_class_bf16": (  # DINOv2 with registers: pos_embed [1, 16, D]
        dict(architecture="vit", img_size=28, patch_size=7, in_chans=3, embed_dim=40, depth=2,
             num_heads=5, num_classes=4, reg_tokens=4, no_embed_class=True, init_values=1e-5,
             mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
        True, False, torch.bfloat16),
    "vit_avg_pool_reg_tokens_fc_norm": (  # avg over the patches only, not cls or registers
        dict(architecture="vit", img_size=32, patch_size=8, in_chans=3, embed_dim=48, depth=2,
             num_heads=3, num_classes=6, global_pool="avg", reg_tokens=2,
             mean=IMAGENET_MEAN, std=IMAGENET_STD),
        True, True, torch.float32),
    "vit_avg_pool_reg_tokens_no_class_token": (
        dict(architecture="vit", img_size=24, patch_size=6, in_chans=1, embed_dim=32, depth=2,
             num_heads=2, num_classes=3, global_pool="avg", reg_tokens=3, no_embed_class=True,
             mean=[0.5], std=[0.25]),
        False, False, torch.float32),
    "swin_shifted_windows": (  # stage grids 16 and 8, window 4: shifted windows with the mask
        dict(architecture="swin", img_size=32, patch_size=2, in_chans=3, embed_dim=16,
             depths=[2, 2], num_heads=[2, 4], window_size=4, num_classes=5,
             mean=IMAGENET_MEAN, std=IMAGENET_STD),
        None, None, torch.float32),
    "swin_clipped_window_f16": (  # grids 8, 4, 2 with window 4: stage 1 one window, stage 2 clipped
        dict(architecture="swin", img_size=32, patch_size=4, in_chans=3, embed_dim=12,
             depths=[2, 2, 2], num_heads=[1, 2, 4], window_size=4, mlp_ratio=4.0, qkv_bias=True,
             layer_norm_eps=1e-5, global_pool="avg", num_classes=6,
             mean=IMAGENET_MEAN, std=IMAGENET_STD),
        None, None, torch.float16),
    "swin_odd_window_bf16": (  # window 3, shift 1, grids 12 and 6, a third block in stage 1
        dict(architecture="swin", img_size=24, patch_size=2, in_chans=1, embed_dim=12,
             depths=[2, 3], num_heads=[3, 6], window_size=3, mlp_ratio=2.0, qkv_bias=False,
             num_classes=4, mean=[0.5], std=[0.25]),
        None, None, torch.bfloat16),
}


def random_family_tensors(model, seed, dtype=torch.float32):
    """Random weights for `model` with O(1) logits: linear and conv weights N(0, 1/fan_in),
    LayerNorm weights near 1, LayerScale gammas in [0.2, 1.2), and tokens, pos_embed and relative
    position bias tables large enough that a misplaced one moves the logits."""
    torch.manual_seed(seed)
    norms = {n for n, m in model.named_modules() if isinstance(m, nn.LayerNorm)}
    out = {}
    for name, p in model.state_dict().items():
        owner, _, leaf = name.rpartition(".")
        if owner in norms:
            t = (1.0 if leaf == "weight" else 0.0) + 0.1 * torch.randn(p.shape)
        elif leaf == "gamma":
            t = 0.2 + torch.rand(p.shape)
        elif leaf == "relative_position_bias_table":
            t = torch.randn(p.shape)
        elif leaf in ("cls_token", "dist_token", "reg_token", "pos_embed"):
            t = 0.5 * torch.randn(p.shape)
        elif p.dim() >= 2:
            t = torch.randn(p.shape) / math.sqrt(p[0].numel())
        else:
            t = 0.1 * torch.randn(p.shape)
        out[name] = t.to(dtype)
    return out


def family_variant(name, count=24):
    """(config, tensors, images) of a FAMILY_VARIANTS entry, the same on every call."""
    config, class_token, fc_norm, dtype = FAMILY_VARIANTS[name]
    seed = zlib.crc32(name.encode())
    model = make_model(config, class_token=class_token, fc_norm=fc_norm)
    tensors = random_family_tensors(model, seed, dtype)
    torch.manual_seed(seed + 1)
    # In [0, 1], with a per-image, per-channel level and a per-image contrast, so that the images
    # (and so the logits and their argmax) differ even after pooling over many tokens.
    c, s = config["in_chans"], config["img_size"]
    images = (0.5 * torch.rand(count, c, 1, 1) +
              (0.2 + 0.3 * torch.rand(count, 1, 1, 1)) * torch.rand(count, c, s, s))
    return config, tensors, images


def write_data(workdir, images):
    path = os.path.join(workdir, "data.safetensors")
    write_safetensors(path, {"images": images,
                             "labels": torch.zeros(images.shape[0], dtype=torch.int64)})
    return path


def schema_tensor_shapes(config, class_token=True, fc_norm=False):
    """The tensor names and shapes docs/checkpoints.md gives a config,
    enumerated from its text, independently of the modules above."""
    c = resolve(config)
    d, ch, p = c["embed_dim"], c["in_chans"], c["patch_size"]
    shapes = {"patch_embed.proj.weight": [d, ch, p, p], "patch_embed.proj.bias": [d]}

    def linear(name, n_out, n_in, bias=True):
        shapes[name + ".weight"] = [n_out, n_in]
        if bias:
            shapes[name + ".bias"] = [n_out]

    def norm(name, n):
        shapes[name + ".weight"] = [n]
        shapes[name + ".bias"] = [n]

    def block(prefix, dim):
        norm(prefix + "norm1", dim)
        linear(prefix + "attn.qkv", 3 * dim, dim, c["qkv_bias"])
        linear(prefix + "attn.proj", dim, dim)
        norm(prefix + "norm2", dim)
        hidden = int(dim * c["mlp_ratio"])
        linear(prefix + "mlp.fc1", hidden, dim)
        linear(prefix + "mlp.fc2", dim, hidden)

    grid = c["img_size"] // p
    if c["architecture"] == "swin":
        norm("patch_embed.norm", d)
        for i, (depth, heads) in enumerate(zip(c["depths"], c["num_heads"])):
            dim, res = d * 2 ** i, grid // 2 ** i
            w = res if res <= c["window_size"] else c["window_size"]
            if i:
                norm(f"layers.{i}.downsample.norm", 2 * dim)
                linear(f"layers.{i}.downsample.reduction", dim, 2 * dim, bias=False)
            for j in range(depth):
                block(f"layers.{i}.blocks.{j}.", dim)
                shapes[f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"] = [
                    (2 * w - 1) ** 2, heads]
        last = d * 2 ** (len(c["depths"]) - 1)
        norm("norm", last)
        linear("head.fc", c["num_classes"], last)
        return shapes
    prefix = (1 if class_token else 0) + (1 if c["distilled"] else 0) + c["reg_tokens"]
    if class_token:
        shapes["cls_token"] = [1, 1, d]
    if c["distilled"]:
        shapes["dist_token"] = [1, 1, d]
        linear("head_dist", c["num_classes"], d)
    if c["reg_tokens"]:
        shapes["reg_token"] = [1, c["reg_tokens"], d]
    shapes["pos_embed"] = [1, grid * grid + (0 if c["no_embed_class"] else prefix), d]
    for i in range(c["depth"]):
        block(f"blocks.{i}.", d)
        if c["init_values"] is not None:
            shapes[f"blocks.{i}.ls1.gamma"] = [d]
            shapes[f"blocks.{i}.ls2.gamma"] = [d]
    norm("fc_norm" if fc_norm else "norm", d)
    linear("head", c["num_classes"], d)
    return shapes


def brute_force_window_attention(block, x):
    """A Swin block's attention over the whole [B, H, W, C] grid as one global attention, with an
    additive matrix built per token pair from the block's rules: pairs in different windows of the
    shifted grid are cut off (-inf); pairs in one window get the relative position bias of their
    offset, plus -100 when they come from different regions of the cyclic shift. With a single
    window and no shift this is plain global attention with relative position bias."""
    b, h, wd, c = x.shape
    w, s, attn = block.window, block.shift, block.attn
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(wd), indexing="ij")
    sy, sx = ((ys - s) % h).flatten(), ((xs - s) % wd).flatten()  # positions in the shifted grid
    window = (sy // w) * (wd // w) + sx // w

    def region(v, size):  # the shift's bands: [0, size-w), [size-w, size-s), [size-s, size)
        if s == 0:
            return torch.zeros_like(v)
        return (v >= size - w).long() + (v >= size - s).long()

    regions = region(sy, h) * 3 + region(sx, wd)
    dy = (sy % w)[:, None] - (sy % w)[None, :]
    dx = (sx % w)[:, None] - (sx % w)[None, :]
    bias = attn.relative_position_bias_table[(dy + w - 1) * (2 * w - 1) + dx + w - 1]
    bias = bias.permute(2, 0, 1)  # [heads, L, L]
    across = torch.where(regions[:, None] == regions[None, :], 0.0, -100.0)
    additive = torch.where(window[:, None] == window[None, :], bias + across,
                           torch.tensor(float("-inf")))
    tokens = x.reshape(b, h * wd, c)
    qkv = attn.qkv(tokens).reshape(b, h * wd, 3, attn.heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv.unbind(0)
    scores = q @ k.transpose(-2, -1) * (c // attn.heads) ** -0.5 + additive
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, h * wd, c)
    return attn.proj(out).reshape(b, h, wd, c)


def run_eval(config, tensors, data_path, workdir):
    config_path = os.path.join(workdir, "config.json")
    weights_path = os.path.join(workdir, "model.safetensors")
    with open(config_path, "w") as f:
        json.dump(config, f)
    write_safetensors(weights_path, tensors)
    cmd = [QSEARCH, "eval", "--config", config_path, "--weights", weights_path, "--data",
           data_path, "--limit", "0", "--dump-logits", os.path.join(workdir, "logits.safetensors"),
           "--json"]
    return subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          timeout=600)


class FamilyReferenceTest(LogitComparison, unittest.TestCase):
    """qsearch's forward of each timm family against the reference (1e-4 on the logits)."""

    def check(self, *names):
        for name in names:
            config, tensors, images = family_variant(name)
            with self.subTest(variant=name), tempfile.TemporaryDirectory() as d:
                self.compare(config, tensors, images, write_data(d, images), d, 0)

    def test_deit_distilled(self):
        self.check("deit_distilled", "deit_distilled_layerscale_f16")

    def test_layerscale(self):
        self.check("vit_layerscale")

    def test_no_embed_class(self):
        self.check("deit3_no_embed_class")

    def test_reg_tokens(self):
        self.check("vit_reg_tokens")

    def test_reg_tokens_no_embed_class(self):
        self.check("vit_reg_tokens_no_embed_class_bf16")

    def test_avg_pool_with_registers(self):
        self.check("vit_avg_pool_reg_tokens_fc_norm", "vit_avg_pool_reg_tokens_no_class_token")

    def test_swin_shifted_windows(self):
        self.check("swin_shifted_windows")

    def test_swin_clipped_window(self):
        self.check("swin_clipped_window_f16")

    def test_swin_odd_window(self):
        self.check("swin_odd_window_bf16")

    def test_swin_saved_buffers_are_ignored(self):
        # timm 0.9.0 to 0.9.5 saved Swin's relative_position_index and attn_mask buffers; the
        # schema has qsearch ignore them (it recomputes both).
        config, tensors, images = family_variant("swin_shifted_windows")
        model = build_reference(config, tensors)
        buffers = {n: b for n, b in model.named_buffers() if b is not None}
        self.assertTrue(any(n.endswith("attn_mask") for n in buffers))
        with torch.no_grad():
            expected = model(normalize(images, config))
        with tempfile.TemporaryDirectory() as d:
            r = run_eval(config, dict(tensors, **buffers), write_data(d, images), d)
            self.assertEqual(r.returncode, 0, r.stderr)
            got = read_safetensors(os.path.join(d, "logits.safetensors"))["logits"]
        self.assertLessEqual((got - expected).abs().max().item(), 1e-4)

    def test_unknown_architecture_is_refused(self):
        config = dict(architecture="vit", img_size=16, patch_size=8, in_chans=1, embed_dim=16,
                      depth=1, num_heads=2, num_classes=3, mean=[0.5], std=[0.5])
        tensors = random_family_tensors(make_model(config), seed=1)
        images = torch.rand(2, 1, 16, 16)
        config["architecture"] = "convnext"  # otherwise a valid ViT config and checkpoint
        with tempfile.TemporaryDirectory() as d:
            r = run_eval(config, tensors, write_data(d, images), d)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("convnext", r.stdout + r.stderr)

    def test_swin_missing_tensor_is_named(self):
        config, tensors, images = family_variant("swin_shifted_windows", count=2)
        del tensors["layers.1.downsample.reduction.weight"]
        with tempfile.TemporaryDirectory() as d:
            r = run_eval(config, tensors, write_data(d, images), d)
        self.assertNotEqual(r.returncode, 0, r.stdout)
        self.assertIn("layers.1.downsample.reduction.weight", r.stdout + r.stderr)


class ReferenceSelfCheckTest(unittest.TestCase):
    """The reference against itself and the schema (no qsearch needed): tensor names and shapes,
    Swin's windows, shift mask and merging order, and that each family feature moves the logits
    well past the 1e-4 tolerance (so a qsearch that skipped it would fail)."""

    def test_state_dict_matches_schema(self):
        for name, (config, class_token, fc_norm, _) in FAMILY_VARIANTS.items():
            with self.subTest(variant=name):
                model = make_model(config, class_token=class_token, fc_norm=fc_norm)
                got = {k: list(v.shape) for k, v in model.state_dict().items()}
                self.assertEqual(got, schema_tensor_shapes(config, class_token, fc_norm))

    def test_swin_windows_match_brute_force_attention(self):
        seen = set()
        for name, (config, *_rest) in FAMILY_VARIANTS.items():
            if config["architecture"] != "swin":
                continue
            _, tensors, _ = family_variant(name)
            model = build_reference(config, tensors)
            grid = config["img_size"] // config["patch_size"]
            for i, stage in enumerate(model.layers):
                res = grid // 2 ** i
                for j, blk in enumerate(stage.blocks):
                    kind = ("global" if blk.window == res else
                            "shifted" if blk.shift else "windowed")
                    if res <= config["window_size"]:
                        self.assertEqual((blk.window, blk.shift), (res, 0))
                    else:
                        self.assertEqual(blk.window, config["window_size"])
                        self.assertEqual(blk.shift, config["window_size"] // 2 if j % 2 else 0)
                    seen.add(kind)
                    torch.manual_seed(i * 10 + j)
                    x = torch.randn(2, res, res, blk.norm1.normalized_shape[0])
                    with torch.no_grad(), self.subTest(variant=name, block=f"{i}.{j}"):
                        diff = (blk.window_attention(x) - brute_force_window_attention(blk, x))
                        self.assertLess(diff.abs().max().item(), 1e-5)
        self.assertEqual(seen, {"global", "shifted", "windowed"})

    def test_swin_mask_matches_region_rule(self):
        for res, w, s in ((16, 4, 2), (8, 4, 2), (12, 3, 1), (6, 3, 1)):
            mask = shifted_window_mask(res, w, s)
            nw = res // w
            self.assertEqual(tuple(mask.shape), (nw * nw, w * w, w * w))
            for win in range(nw * nw):
                ty, tx = torch.meshgrid(torch.arange(w), torch.arange(w), indexing="ij")
                y = ((win // nw) * w + ty).flatten()
                x = ((win % nw) * w + tx).flatten()
                band = lambda v: 0 if v < res - w else (1 if v < res - s else 2)  # noqa: E731
                reg = [band(int(a)) * 3 + band(int(b)) for a, b in zip(y, x)]
                want = torch.tensor([[0.0 if ri == rj else -100.0 for rj in reg] for ri in reg])
                self.assertTrue(torch.equal(mask[win], want), (res, w, s, win))
            # Only the windows on the last row or column of windows mix regions.
            inner = [win for win in range(nw * nw) if win // nw < nw - 1 and win % nw < nw - 1]
            self.assertTrue(all(bool((mask[win] == 0).all()) for win in inner))
            self.assertTrue(bool((mask[-1] != 0).any()))

    def test_patch_merging_order(self):
        torch.manual_seed(0)
        merge = PatchMerging(4, 1e-5)
        for p in merge.parameters():
            nn.init.normal_(p)
        x = torch.randn(2, 6, 6, 4)
        parts = [x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]]
        cat = torch.cat(parts, -1)  # the schema's order
        with torch.no_grad():
            self.assertTrue(torch.allclose(merge(x), merge.reduction(merge.norm(cat)), atol=1e-6))

    def test_features_move_logits(self):
        def logits(name, edit=None):
            config, tensors, images = family_variant(name, count=8)
            model = build_reference(config, tensors)
            if edit:
                edit(model)
            with torch.no_grad():
                return model(normalize(images, config))

        for name in FAMILY_VARIANTS:
            out = logits(name)
            with self.subTest(variant=name):
                self.assertTrue(0.3 < out.std().item() < 30, out.std().item())
                self.assertGreater(out.std(0).mean().item(), 0.1)  # the images' logits differ

        def set_params(suffix, fn):
            def edit(model):
                with torch.no_grad():
                    for n, p in model.named_parameters():
                        if n.endswith(suffix):
                            p.copy_(fn(p))
            return edit

        def set_blocks(attr, fn):
            def edit(model):
                for layer in model.layers:
                    for blk in layer.blocks:
                        setattr(blk, attr, fn(blk))
            return edit

        def unshift(blk):
            blk.attn_mask = None
            return 0

        edits = [
            ("vit_layerscale", "gammas 1", set_params("gamma", torch.ones_like)),
            ("vit_reg_tokens", "registers 0", set_params("reg_token", torch.zeros_like)),
            ("vit_reg_tokens_no_embed_class_bf16", "registers 0",
             set_params("reg_token", torch.zeros_like)),
            ("vit_avg_pool_reg_tokens_fc_norm", "registers 0",
             set_params("reg_token", torch.zeros_like)),
            ("deit_distilled", "head_dist 0", set_params("head_dist.weight", torch.zeros_like)),
            ("deit_distilled", "dist_token 0", set_params("dist_token", torch.zeros_like)),
            ("deit3_no_embed_class", "cls_token 0", set_params("cls_token", torch.zeros_like)),
            ("swin_shifted_windows", "no relative bias",
             set_params("relative_position_bias_table", torch.zeros_like)),
            ("swin_shifted_windows", "no mask", set_blocks("attn_mask", lambda blk: None)),
            ("swin_shifted_windows", "no shift", set_blocks("shift", unshift)),
            ("swin_odd_window_bf16", "no mask", set_blocks("attn_mask", lambda blk: None)),
            ("swin_clipped_window_f16", "no relative bias in the clipped stage",
             set_params("layers.2.blocks.1.attn.relative_position_bias_table", torch.zeros_like)),
        ]
        for name, label, edit in edits:
            with self.subTest(variant=name, edit=label):
                self.assertGreater((logits(name, edit) - logits(name)).abs().max().item(), 1e-2)

    def test_distilled_refuses_what_timm_lacks(self):
        config = dict(FAMILY_VARIANTS["deit_distilled"][0])
        for extra in (dict(reg_tokens=1), dict(no_embed_class=True), dict(global_pool="avg")):
            with self.subTest(extra=extra), self.assertRaises(ValueError):
                make_model(dict(config, **extra))


def import_timm():
    """timm from QS_TIMM_PATH (a source checkout) or the installed one; None when neither."""
    if os.environ.get("QS_TIMM_PATH"):
        sys.path.insert(0, os.environ["QS_TIMM_PATH"])
    try:
        import timm.models.deit
        import timm.models.swin_transformer
        import timm.models.vision_transformer
        return timm
    except ImportError:
        return None


class TimmCrossCheckTest(unittest.TestCase):
    """The reference against timm itself, where timm can be imported (QS_TIMM_PATH=<a checkout of
    pytorch-image-models> or an installed timm); skipped otherwise (it is not installed here)."""

    def test_reference_equals_timm(self):
        timm = import_timm()
        if timm is None:
            self.skipTest("timm is not importable (set QS_TIMM_PATH to a source checkout)")
        for name, (config, class_token, fc_norm, _) in FAMILY_VARIANTS.items():
            c = resolve(config)
            common = dict(img_size=c["img_size"], patch_size=c["patch_size"],
                          in_chans=c["in_chans"], num_classes=c["num_classes"],
                          embed_dim=c["embed_dim"], mlp_ratio=c["mlp_ratio"],
                          qkv_bias=c["qkv_bias"], global_pool=c["global_pool"])
            if c["architecture"] == "swin":
                model = timm.models.swin_transformer.SwinTransformer(
                    depths=c["depths"], num_heads=c["num_heads"], window_size=c["window_size"],
                    drop_path_rate=0.0, **common)
            else:
                vit = dict(common, depth=c["depth"], num_heads=c["num_heads"],
                           init_values=c["init_values"], class_token=class_token,
                           no_embed_class=c["no_embed_class"], fc_norm=fc_norm)
                if c["distilled"]:
                    model = timm.models.deit.VisionTransformerDistilled(**vit)
                else:
                    model = timm.models.vision_transformer.VisionTransformer(
                        reg_tokens=c["reg_tokens"], **vit)
            _, tensors, images = family_variant(name, count=8)
            model.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
            model.eval()
            with torch.no_grad(), self.subTest(variant=name):
                x = normalize(images, config)
                diff = (model(x) - build_reference(config, tensors)(x)).abs().max().item()
                self.assertLess(diff, 1e-5)

if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import testlib
    testlib.main(sys.modules[__name__])
