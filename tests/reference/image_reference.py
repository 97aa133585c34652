#!/usr/bin/python3
"""Checks qsearch's image decoding and evaluation transform against torchvision on PIL images.

Writes an ImageNet-style folder of JPEG and PNG files with PIL (and a few PNG variants PIL cannot
write, by hand), runs `qsearch images --data imagefolder:DIR --dump OUT` for several model configs,
and compares the dumped images with torchvision's
    Resize(floor(img_size / crop_pct), interpolation) -> CenterCrop(img_size) -> ToTensor()
of Image.open(path).convert("RGB") (or "L" for one channel), in ImageFolder's order. Runs with
Debian's python3-torchvision and python3-pil (Pillow 9.4), the versions core/image_io.h follows.

  /usr/bin/python3 tests/reference/image_reference.py --qsearch build/qsearch
"""
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import unittest
import warnings
import zlib

import numpy as np
import torch
from PIL import Image
from torchvision import datasets, transforms
from torchvision.transforms import InterpolationMode

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from vit_reference import read_safetensors  # noqa: E402

QSEARCH = "build/qsearch"

# qsearch decodes with the same libjpeg-turbo as Debian's PIL and reproduces PIL's fixed-point
# resampling and torchvision's crop and division step by step: the tensors are bit-identical.
TOLERANCE = 0.0

INTERPOLATIONS = {"bicubic": InterpolationMode.BICUBIC, "bilinear": InterpolationMode.BILINEAR,
                  "nearest": InterpolationMode.NEAREST}
# (img_size, patch_size, crop_pct): timm's default, a small crop, and no margin at all.
SIZES = [(224, 16, 0.875), (32, 8, 0.9), (28, 7, 1.0)]


def png_chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data +
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def write_png(path, samples, color_type, bit_depth, interlace=False):
    """A PNG of `samples` ([H, W, C] uint8 or uint16) with filter 0, optionally Adam7-interlaced."""
    h, w = samples.shape[:2]
    dtype = ">u2" if bit_depth == 16 else "u1"

    def rows(sub):
        return b"".join(b"\0" + sub[y].astype(dtype).tobytes() for y in range(sub.shape[0]))

    if interlace:
        passes = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4),
                  (1, 0, 2, 2), (0, 1, 1, 2)]
        raw = b"".join(rows(samples[y0::dy, x0::dx]) for x0, y0, dx, dy in passes
                       if samples[y0::dy, x0::dx].size)
    else:
        raw = rows(samples)
    header = struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0, int(interlace))
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) +
                png_chunk(b"IDAT", zlib.compress(raw)) + png_chunk(b"IEND", b""))


def photo(rng, h, w, c):
    """Smooth structure plus noise, so that resampling differences would show."""
    y, x = np.mgrid[0:h, 0:w]
    bands = [128 + 100 * np.sin(x / (3 + 7 * k) + y / (5 + 3 * k) + k) for k in range(c)]
    return np.clip(np.stack(bands, -1) + rng.normal(0, 25, (h, w, c)), 0, 255).astype(np.uint8)


def make_folder(root):
    """Class folders a_class, b_class, c_class of mixed formats, sizes and aspect ratios. Returns
    {relative path: kind} with kind "jpeg" or "png"."""
    rng = np.random.default_rng(0)
    kinds = {}

    def save(rel, image, **kw):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        image.save(path, **kw)
        kinds[rel] = "png" if rel.lower().endswith(".png") else "jpeg"

    def raw_png(rel, samples, color_type, bit_depth, interlace=False):
        path = os.path.join(root, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        write_png(path, samples, color_type, bit_depth, interlace)
        kinds[rel] = "png"

    rgb = lambda h, w: Image.fromarray(photo(rng, h, w, 3))  # noqa: E731
    save("a_class/landscape_q95.jpg", rgb(375, 500), quality=95)
    save("a_class/portrait_q75.jpg", rgb(333, 250), quality=75)
    save("a_class/n0001_q50.JPEG", rgb(300, 301), quality=50)
    save("a_class/progressive.jpg", rgb(257, 199), quality=90, progressive=True)
    save("a_class/subsampling444.jpg", rgb(120, 160), quality=85, subsampling=0)
    save("a_class/gray.jpg", Image.fromarray(photo(rng, 90, 120, 1)[..., 0]), quality=80)
    save("a_class/cmyk.jpg", Image.fromarray(photo(rng, 80, 64, 4), "CMYK"), quality=90)
    save("a_class/square_224.jpg", rgb(224, 224), quality=90)  # exactly the 224 crop
    save("b_class/rgb.png", rgb(255, 257))
    save("b_class/rgba.png", Image.fromarray(photo(rng, 60, 90, 4), "RGBA"))
    palette_image = rgb(100, 150).quantize(colors=200)
    save("b_class/palette_trns.png", palette_image, transparency=bytes(range(200)))
    save("b_class/palette4.png", rgb(70, 50).quantize(colors=16), bits=4)
    save("b_class/gray.png", Image.fromarray(photo(rng, 40, 40, 1)[..., 0]))
    save("b_class/gray_alpha.png", Image.fromarray(photo(rng, 45, 30, 2), "LA"))
    save("b_class/bilevel.png", Image.fromarray(photo(rng, 33, 47, 1)[..., 0] > 128))
    save("b_class/small_20x14.png", rgb(14, 20))  # smaller than every crop
    save("b_class/square_32.png", rgb(32, 32))  # exactly the 32 crop
    save("c_class/square_28.jpg", rgb(28, 28), quality=95)  # exactly the 28 crop
    save("c_class/thin.png", rgb(400, 9))  # extreme aspect ratio
    deep = photo(rng, 50, 70, 3).astype(np.uint16) * 257 + rng.integers(0, 257, (50, 70, 3))
    raw_png("c_class/rgb16.png", deep.astype(np.uint16), 2, 16)
    raw_png("c_class/interlaced.png", photo(rng, 61, 43, 3), 2, 8, interlace=True)
    return kinds


def torchvision_images(root, in_chans, img_size, crop_pct, interpolation):
    mode = "RGB" if in_chans == 3 else "L"
    tf = transforms.Compose([
        transforms.Resize(int(math.floor(img_size / crop_pct)),
                          interpolation=INTERPOLATIONS[interpolation]),
        transforms.CenterCrop(img_size),
        transforms.ToTensor(),
    ])
    folder = datasets.ImageFolder(root, transform=tf, loader=lambda p: Image.open(p).convert(mode))
    images = torch.stack([folder[i][0] for i in range(len(folder))])
    labels = torch.tensor(folder.targets, dtype=torch.int64)
    paths = [os.path.relpath(p, root) for p, _ in folder.samples]
    return images, labels, paths, len(folder.classes)


def qsearch_images(root, workdir, config):
    config_path = os.path.join(workdir, "config.json")
    out = os.path.join(workdir, "images.safetensors")
    with open(config_path, "w") as f:
        json.dump(config, f)
    subprocess.run([QSEARCH, "images", "--config", config_path, "--data", "imagefolder:" + root,
                    "--dump", out], check=True, stdout=subprocess.PIPE)
    return read_safetensors(out)


class ImageReferenceTest(unittest.TestCase):
    def test_transform_matches_torchvision(self):
        # PIL warns when it converts a palette image whose tRNS chunk it cannot express; the
        # palette mapping, which is what is compared, is unaffected.
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as workdir:
            warnings.filterwarnings("ignore", "Palette images with Transparency")
            root = os.path.join(workdir, "data")
            kinds = make_folder(root)
            worst = {}
            for in_chans in (3, 1):
                for img_size, patch_size, crop_pct in SIZES:
                    for interpolation in INTERPOLATIONS:
                        case = dict(in_chans=in_chans, img_size=img_size, crop_pct=crop_pct,
                                    interpolation=interpolation)
                        with self.subTest(**case):
                            expected, labels, paths, classes = torchvision_images(
                                root, in_chans, img_size, crop_pct, interpolation)
                            config = dict(architecture="vit", img_size=img_size,
                                          patch_size=patch_size, in_chans=in_chans, embed_dim=8,
                                          depth=1, num_heads=1, num_classes=classes,
                                          crop_pct=crop_pct, interpolation=interpolation)
                            if in_chans != 3:
                                config.update(mean=[0.5], std=[0.25])
                            got = qsearch_images(root, workdir, config)
                            self.assertEqual(set(got), {"images", "labels"})
                            self.assertEqual(got["images"].dtype, torch.float32)
                            self.assertEqual(tuple(got["images"].shape), tuple(expected.shape))
                            self.assertTrue(torch.equal(got["labels"], labels))
                            diff = (got["images"] - expected).abs().flatten(1).max(1).values
                            for path, d in zip(paths, diff.tolist()):
                                key = (interpolation, kinds[path])
                                worst[key] = max(worst.get(key, 0.0), d)
                                self.assertLessEqual(d, TOLERANCE, f"{path}: max |diff| {d}")
            self.assertEqual(len(worst), 2 * len(INTERPOLATIONS))
            for (interpolation, kind), d in sorted(worst.items()):
                print(f"{interpolation:8s} {kind:4s} max |qsearch - torchvision| = {d * 255:g}/255",
                      file=sys.stderr)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import testlib
    testlib.main(sys.modules[__name__])
