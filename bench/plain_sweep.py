#!/usr/bin/python3
"""The reference for qsearch's RTN sweep: the straightforward PyTorch script a user would write.

The same sweep as `qsearch bench`'s (a 6-block, width-96 ViT at patch 4 with random weights, 256
Fashion-MNIST calibration images; at every linear site RTN weight bits {2,3,4,6,8} × activation
bits {4,6,8}, min-max grids: per-channel symmetric weights, per-tensor affine activations; the
layer output's SQNR), done the plain way: one float pass capturing each linear layer's input, then
for every configuration quantize and recompute the layer's output over all tokens. Prints one JSON
object: seconds per candidate over one float pass over the calibration images, timed here.

  /usr/bin/python3 bench/plain_sweep.py [--images 256]
"""
import argparse
import gzip
import json
import math
import time

import numpy as np
import torch

FASHION_MNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


def images(count):
    with gzip.open(FASHION_MNIST, "rb") as f:
        data = np.frombuffer(f.read(), dtype=np.uint8, offset=16).reshape(-1, 1, 28, 28)
    x = torch.from_numpy(data[:count].astype(np.float32) / 255.0)
    return (x - 0.2860) / 0.3530


def random_vit(depth=6, dim=96, heads=4, hidden=192, patch=4, seed=7):
    g = torch.Generator().manual_seed(seed)
    w = lambda *s: (torch.randn(*s, generator=g) * 0.02).clamp(-0.04, 0.04)
    p = {"patch": w(dim, patch * patch), "patch_b": torch.zeros(dim), "cls": w(1, 1, dim),
         "pos": w(1, 50, dim), "head": w(10, dim), "head_b": torch.zeros(10)}
    for i in range(depth):
        p[f"{i}.qkv"], p[f"{i}.qkv_b"] = w(3 * dim, dim), torch.zeros(3 * dim)
        p[f"{i}.proj"], p[f"{i}.proj_b"] = w(dim, dim), torch.zeros(dim)
        p[f"{i}.fc1"], p[f"{i}.fc1_b"] = w(hidden, dim), torch.zeros(hidden)
        p[f"{i}.fc2"], p[f"{i}.fc2_b"] = w(dim, hidden), torch.zeros(dim)
    return p, depth, dim, heads


def forward(x, model, record=None):
    p, depth, dim, heads = model

    def linear(name, inp):
        if record is not None:
            record[name] = inp
        return torch.nn.functional.linear(inp, p[name], p[name + "_b"])

    b = x.shape[0]
    patches = x.reshape(b, 1, 7, 4, 7, 4).permute(0, 2, 4, 1, 3, 5).reshape(b, 49, 16)
    t = torch.cat([p["cls"].expand(b, 1, dim), linear("patch", patches)], 1) + p["pos"]
    for i in range(depth):
        y = torch.nn.functional.layer_norm(t, (dim,))
        qkv = linear(f"{i}.qkv", y).reshape(b, 50, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        a = (qkv[0] @ qkv[1].transpose(-2, -1) / math.sqrt(dim // heads)).softmax(-1)
        t = t + linear(f"{i}.proj", (a @ qkv[2]).transpose(1, 2).reshape(b, 50, dim))
        y = torch.nn.functional.gelu(linear(f"{i}.fc1", torch.nn.functional.layer_norm(t, (dim,))))
        t = t + linear(f"{i}.fc2", y)
    return linear("head", torch.nn.functional.layer_norm(t, (dim,))[:, 0])


def fake_quant(x, scale, zero, qmin, qmax):
    return (torch.clamp(torch.round(x / scale) + zero, qmin, qmax) - zero) * scale


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=256)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    model = random_vit()
    x = images(args.images)
    forward(x, model)  # warm-up
    passes = []
    for _ in range(5):
        start = time.perf_counter()
        forward(x, model)
        passes.append(time.perf_counter() - start)
    fp32_pass = sorted(passes)[len(passes) // 2]

    start = time.perf_counter()
    inputs = {}
    forward(x, model, inputs)
    p = model[0]
    candidates = 0
    for name, inp in inputs.items():
        rows = inp.reshape(-1, inp.shape[-1])
        w, bias = p[name], p[name + "_b"]
        reference = torch.nn.functional.linear(rows, w, bias)
        signal = reference.double().pow(2).sum()
        for abits in (4, 6, 8):
            lo, hi = rows.min().clamp(max=0), rows.max().clamp(min=0)
            scale = ((hi - lo) / (2 ** abits - 1)).clamp(min=1e-8)
            zero = torch.round(-lo / scale)
            x_hat = fake_quant(rows, scale, zero, 0, 2 ** abits - 1)
            for wbits in (2, 3, 4, 6, 8):
                qmax = 2 ** (wbits - 1) - 1
                ws = (w.abs().amax(1, keepdim=True) / qmax).clamp(min=1e-8)
                w_hat = fake_quant(w, ws, 0, -qmax - 1, qmax)
                out = torch.nn.functional.linear(x_hat, w_hat, bias)
                noise = (reference - out).double().pow(2).sum()
                _ = 10 * torch.log10(signal / noise)
                candidates += 1
    sweep = time.perf_counter() - start
    print(json.dumps({"candidates": candidates, "sweep_seconds": sweep,
                      "fp32_calibration_pass_seconds": fp32_pass,
                      "candidate_ratio": sweep / candidates / fp32_pass,
                      "torch": torch.__version__, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main()
