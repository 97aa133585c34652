#!/usr/bin/python3
"""Writes the seed corpora of the binary-input fuzz targets into fuzz/corpus/ (small valid inputs
of each format, so that libFuzzer starts from the structures it has to mutate).

  /usr/bin/python3 fuzz/make_corpus.py     # from the repository root; needs python3-pil, protoc

The JSON and YAML corpora (fuzz/corpus/json, fuzz/corpus/yaml) are kept by hand.
"""
import gzip
import io
import json
import os
import struct
import subprocess

from PIL import Image

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def put(corpus, name, data):
    os.makedirs(os.path.join(ROOT, corpus), exist_ok=True)
    with open(os.path.join(ROOT, corpus, name), "wb") as f:
        f.write(data)


def safetensors(tensors, metadata=None):
    header, blobs, offset = {}, [], 0
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode()
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def idx(shape, data):
    head = bytes([0, 0, 0x08, len(shape)]) + b"".join(struct.pack(">I", d) for d in shape)
    return head + data


def image(mode, size, fmt, **options):
    img = Image.new(mode, size)
    w, h = size
    bands = len(img.getbands())
    pixels = bytes(((x * 37 + y * 11 + c * 5) % 256 for y in range(h) for x in range(w)
                    for c in range(bands)))
    img = Image.frombytes(mode, size, pixels) if mode != "P" else img
    if mode == "P":
        img.putpalette([i % 256 for i in range(768)])
        img.putdata([(x + y) % 16 for y in range(h) for x in range(w)])
    out = io.BytesIO()
    img.save(out, fmt, **options)
    return out.getvalue()


def proto(message, text):
    return subprocess.run(
        ["protoc", "-Iproto", "--encode=qsearch.v1." + message,
         "proto/qsearch/v1/quant_search.proto", "proto/qsearch/v1/blob_store.proto"],
        input=text.encode(), stdout=subprocess.PIPE, check=True,
        cwd=os.path.join(ROOT, "..", "..")).stdout


def main():
    f32 = struct.pack("<6f", 1, -2, 3.5, 0, 1e-3, 7)
    put("safetensors", "f32.safetensors", safetensors({"w": ("F32", [2, 3], f32)}, {"k": "v"}))
    put("safetensors", "mixed.safetensors", safetensors({
        "a": ("F16", [2], b"\x00\x3c\x00\xc0"), "b": ("BF16", [1], b"\x80\x3f"),
        "c": ("I64", [1], struct.pack("<q", -5)), "d": ("U8", [3], b"\x01\x02\x03"),
        "e": ("BOOL", [2], b"\x00\x01"), "s": ("F32", [], struct.pack("<f", 2.5)),
        "z": ("F64", [0], b"")}))

    images = idx([3, 4, 4], bytes(range(48)))
    labels = idx([3], bytes([0, 9, 4]))
    put("idx", "images.idx", images)
    put("idx", "labels.idx", labels)
    put("idx", "images.idx.gz", gzip.compress(images, mtime=0))

    # The first byte picks gray (even) or RGB (odd) decoding.
    put("image", "rgb.png", b"\x01" + image("RGB", (6, 5), "PNG"))
    put("image", "gray.png", b"\x00" + image("L", (5, 4), "PNG"))
    put("image", "rgba.png", b"\x01" + image("RGBA", (3, 3), "PNG"))
    put("image", "palette.png", b"\x01" + image("P", (4, 4), "PNG"))
    put("image", "rgb-as-gray.png", b"\x00" + image("RGB", (7, 7), "PNG"))
    put("image", "baseline.jpg", b"\x01" + image("RGB", (8, 8), "JPEG", quality=90))
    put("image", "progressive.jpg", b"\x00" + image("RGB", (9, 7), "JPEG", progressive=True))
    put("image", "gray.jpg", b"\x01" + image("L", (8, 8), "JPEG"))

    # A chunked value's metadata (NUL-separated fields), and a checkpoint of shape [2, 3] float32.
    put("cache", "layout", b"\0".join([b"_size", b"10", b"_chunks", b"2", b"_sha256", b"a" * 64,
                                       b"dtype", b"float32"]))
    put("cache", "checkpoint", b"dtype=float32\nshape=2,3\nseconds=1.5\n\n" + f32)

    # The first byte picks the RPC (fuzz_grpc_request.cc): 0 CreateJob, 1 GetJob, 2 ListJobs,
    # 3 WatchJob, 4 Write, 5 Read, 6 FindMissingBlobs.
    put("grpc", "create", b"\x00" + proto("CreateJobRequest", """
        request_id: "retry-1"
        spec {
          model { config: "blob:sha256:%s" weights: "blob:sha256:%s" }
          calibration { source: "fashion-mnist:train" count: 32 seed: 7 }
          validation { source: "fashion-mnist:test[0:500]" }
          search { weight_methods: "rtn" weight_methods: "gptq" weight_bits: 4 weight_bits: 8
                   activation_bits: 8 skip: "patch_embed" reparam: false reparam: true
                   pin { key: "head" value: "{\\"weight\\": {\\"bits\\": 8}}" } }
          objective { budget_kind: "avg_weight_bits" budget: 5 }
          accuracy { max_abs_top1_drop: 0.01 max_validations: 4 }
          compute { device: "cpu" }
        }""" % ("a" * 64, "b" * 64)))
    put("grpc", "get", b"\x01" + proto("GetJobRequest", 'name: "jobs/18c2-ab"'))
    put("grpc", "list", b"\x02" + proto("ListJobsRequest", 'page_size: 20 page_token: "40"'))
    put("grpc", "watch", b"\x03" + proto("WatchJobRequest", 'name: "jobs/x" after_seq: 3'))
    put("grpc", "write", b"\x04" + proto("WriteBlobRequest",
                                         'digest { sha256: "%s" size_bytes: 3 } data: "abc" '
                                         'finish_write: true' % ("b" * 64)))
    put("grpc", "read", b"\x05" + proto("ReadBlobRequest",
                                        'digest { sha256: "%s" size_bytes: 9 } read_offset: 2 '
                                        'read_limit: 4' % ("c" * 64)))
    put("grpc", "missing", b"\x06" + proto("FindMissingBlobsRequest",
                                           'digests { sha256: "%s" size_bytes: 1 }' % ("d" * 64)))


if __name__ == "__main__":
    main()
