#!/usr/bin/env node
// Reference runner for exported models: runs an ONNX model with onnxruntime-node on the CPU
// execution provider, so tests can compare its logits against qsearch's own forward pass.
//
//   node tests/export/run_onnx.mjs --model M.onnx --images IN.safetensors --out OUT.safetensors \
//       [--batch 64] [--input NAME]
//
// IN.safetensors holds one F32 tensor `images` [B,C,H,W], already normalized. The model must have
// a single graph input (NAME, by default the session's first input name) and one float output
// (or several, one of them named `logits`) of shape [batch, num_classes]. The images are run in
// batches of --batch (a model whose batch dimension is fixed runs in batches of that size, the
// last one padded with zeros). OUT.safetensors gets one F32 tensor `logits` [B, num_classes].
//
// Prints one JSON line on stdout: {"onnxruntime": VERSION, "images": B, "seconds": T}, T being the
// time spent in inference (not in loading the model or the files). Any error: a message on
// stderr and exit code 2.
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { parseArgs } from "node:util";

class Failure extends Error {}

function fail(message) {
  throw new Failure(message);
}

const USAGE =
  "usage: node run_onnx.mjs --model M.onnx --images IN.safetensors --out OUT.safetensors " +
  "[--batch 64] [--input NAME]";

function parseCommandLine(argv) {
  let values;
  try {
    ({ values } = parseArgs({
      args: argv,
      options: {
        model: { type: "string" },
        images: { type: "string" },
        out: { type: "string" },
        batch: { type: "string", default: "64" },
        input: { type: "string" },
        help: { type: "boolean", short: "h" },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    fail(`${e.message}\n${USAGE}`);
  }
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    process.exit(0);
  }
  for (const name of ["model", "images", "out"]) {
    if (!values[name]) fail(`missing --${name}\n${USAGE}`);
  }
  if (!/^[1-9][0-9]*$/.test(values.batch)) fail(`--batch must be a positive integer, got "${values.batch}"`);
  return { ...values, batch: Number(values.batch) };
}

// --- safetensors -----------------------------------------------------------------------------
// Layout: u64 little-endian header length N, N bytes of JSON
// {"name": {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {...}}, then the
// data; offsets count from the first byte after the header.

const MAX_HEADER = 100 * 1024 * 1024;

function readSafetensors(file) {
  let buf;
  try {
    buf = fs.readFileSync(file);
  } catch (e) {
    fail(`cannot read ${file}: ${e.code === "ENOENT" ? "no such file" : e.message}`);
  }
  if (buf.length < 8) fail(`${file}: not a safetensors file (${buf.length} bytes)`);
  const headerLen = buf.readBigUInt64LE(0);
  if (headerLen > BigInt(Math.min(MAX_HEADER, buf.length - 8))) {
    fail(`${file}: not a safetensors file (header length ${headerLen}, file ${buf.length} bytes)`);
  }
  const dataStart = 8 + Number(headerLen);
  let header;
  try {
    header = JSON.parse(buf.toString("utf8", 8, dataStart));
  } catch (e) {
    fail(`${file}: not a safetensors file (bad JSON header: ${e.message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) {
    fail(`${file}: not a safetensors file (header is not a JSON object)`);
  }
  return { file, buf, header, dataStart };
}

function f32Tensor(st, name) {
  const entry = st.header[name];
  if (!entry) {
    const names = Object.keys(st.header).filter((k) => k !== "__metadata__");
    fail(`${st.file}: no tensor "${name}" (has: ${names.length ? names.join(", ") : "none"})`);
  }
  if (entry.dtype !== "F32") fail(`${st.file}: tensor "${name}" is ${entry.dtype}, expected F32`);
  const { shape, data_offsets: offsets } = entry;
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    fail(`${st.file}: tensor "${name}" has a bad shape ${JSON.stringify(shape)}`);
  }
  const count = shape.reduce((a, d) => a * d, 1);
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(Number.isSafeInteger) ||
      offsets[1] - offsets[0] !== count * 4 || offsets[0] < 0 ||
      st.dataStart + offsets[1] > st.buf.length) {
    fail(`${st.file}: tensor "${name}" has bad data_offsets ${JSON.stringify(offsets)} ` +
         `for shape ${JSON.stringify(shape)} (${st.buf.length - st.dataStart} data bytes)`);
  }
  // Copy into an aligned buffer: the data need not start on a 4-byte boundary.
  const begin = st.dataStart + offsets[0];
  const data = new Float32Array(count);
  new Uint8Array(data.buffer).set(st.buf.subarray(begin, begin + count * 4));
  return { shape, data };
}

function writeSafetensors(file, tensors) {
  const header = {};
  let offset = 0;
  for (const [name, { shape, data }] of Object.entries(tensors)) {
    header[name] = { dtype: "F32", shape, data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  let json = JSON.stringify(header);
  json += " ".repeat((8 - (Buffer.byteLength(json) % 8)) % 8); // keep the data 8-byte aligned
  const jsonBytes = Buffer.from(json, "utf8");
  const prefix = Buffer.alloc(8);
  prefix.writeBigUInt64LE(BigInt(jsonBytes.length));
  const parts = [prefix, jsonBytes];
  for (const { data } of Object.values(tensors)) {
    parts.push(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
  }
  const tmp = path.join(path.dirname(file), `.${path.basename(file)}.${process.pid}.tmp`);
  try {
    fs.writeFileSync(tmp, Buffer.concat(parts));
    fs.renameSync(tmp, file);
  } catch (e) {
    fs.rmSync(tmp, { force: true });
    fail(`cannot write ${file}: ${e.message}`);
  }
}

// --- model -----------------------------------------------------------------------------------

function describeShape(shape) {
  return `[${shape.map((d) => (typeof d === "number" && d >= 0 ? d : (d || "?"))).join(",")}]`;
}

function pickOutput(session) {
  if (session.outputNames.length === 1) return session.outputNames[0];
  if (session.outputNames.includes("logits")) return "logits";
  fail(`the model has ${session.outputNames.length} outputs (${session.outputNames.join(", ")}) ` +
       `and none is named "logits"`);
}

async function main() {
  const args = parseCommandLine(process.argv.slice(2));
  if (os.endianness() !== "LE") fail("this runner assumes a little-endian machine");
  if (!fs.existsSync(args.model)) fail(`cannot read ${args.model}: no such file`);

  const images = f32Tensor(readSafetensors(args.images), "images");
  if (images.shape.length !== 4) {
    fail(`${args.images}: "images" has shape ${JSON.stringify(images.shape)}, expected [B,C,H,W]`);
  }
  const [count, ...sample] = images.shape;
  if (count === 0) fail(`${args.images}: "images" holds no images`);
  const sampleSize = sample.reduce((a, d) => a * d, 1);

  let ort;
  try {
    ort = await import("onnxruntime-node");
  } catch (e) {
    fail(`cannot load onnxruntime-node (run scripts/setup.sh, or npm ci --ignore-scripts ` +
         `--prefix tests/export): ${e.message}`);
  }
  ort.env.logLevel = "error";
  const version = ort.env.versions?.node ?? ort.env.versions?.common ?? "unknown";

  let session;
  try {
    session = await ort.InferenceSession.create(args.model, {
      executionProviders: ["cpu"],
      logSeverityLevel: 3,
    });
  } catch (e) {
    fail(`cannot load model ${args.model}: ${e.message}`);
  }

  if (session.inputNames.length !== 1) {
    fail(`the model has ${session.inputNames.length} inputs (${session.inputNames.join(", ")}), ` +
         `expected one`);
  }
  const inputName = args.input ?? session.inputNames[0];
  if (inputName !== session.inputNames[0]) {
    fail(`the model has no input "${inputName}" (its input is "${session.inputNames[0]}")`);
  }
  const outputName = pickOutput(session);

  // Check the images against the input's declared type and shape, where the model declares them.
  let batch = args.batch;
  let fixedBatch = false;
  const meta = session.inputMetadata?.[0];
  if (meta?.isTensor) {
    if (meta.type !== "float32") fail(`the model's input "${inputName}" is ${meta.type}, expected float32`);
    const dims = meta.shape ?? [];
    if (dims.length) {
      if (dims.length !== 4) {
        fail(`the model's input "${inputName}" has shape ${describeShape(dims)}, expected [B,C,H,W]`);
      }
      for (let i = 1; i < 4; i++) {
        if (typeof dims[i] === "number" && dims[i] >= 0 && dims[i] !== images.shape[i]) {
          fail(`the model's input "${inputName}" has shape ${describeShape(dims)}, but the images ` +
               `are ${describeShape(images.shape)}`);
        }
      }
      if (typeof dims[0] === "number" && dims[0] > 0) [batch, fixedBatch] = [dims[0], true];
    }
  }

  let logits = null;
  let classes = 0;
  const started = process.hrtime.bigint();
  for (let first = 0; first < count; first += batch) {
    const n = Math.min(batch, count - first);
    const rows = fixedBatch ? batch : n; // a fixed batch size: pad the last batch with zeros
    const chunk = new Float32Array(rows * sampleSize);
    chunk.set(images.data.subarray(first * sampleSize, (first + n) * sampleSize));
    let result;
    try {
      const feeds = { [inputName]: new ort.Tensor("float32", chunk, [rows, ...sample]) };
      result = await session.run(feeds, [outputName]);
    } catch (e) {
      fail(`inference failed on images ${first}..${first + n - 1}: ${e.message}`);
    }
    const out = result[outputName];
    if (out.type !== "float32") fail(`the model's output "${outputName}" is ${out.type}, expected float32`);
    if (out.dims.length !== 2 || out.dims[0] !== rows) {
      fail(`the model's output "${outputName}" has shape ${describeShape(out.dims)} for a batch of ` +
           `${rows}, expected [${rows}, num_classes]`);
    }
    if (logits === null) {
      classes = out.dims[1];
      logits = new Float32Array(count * classes);
    } else if (out.dims[1] !== classes) {
      fail(`the model's output "${outputName}" changed width between batches (${classes} -> ${out.dims[1]})`);
    }
    logits.set(out.data.subarray(0, n * classes), first * classes);
  }
  const seconds = Number(process.hrtime.bigint() - started) / 1e9;
  await session.release?.();

  writeSafetensors(args.out, { logits: { shape: [count, classes], data: logits } });
  process.stdout.write(`${JSON.stringify({ onnxruntime: version, images: count, seconds })}\n`);
}

main().catch((e) => {
  if (e instanceof Failure) {
    process.stderr.write(`run_onnx: ${e.message}\n`);
  } else {
    process.stderr.write(`run_onnx: unexpected error: ${e?.stack ?? e}\n`);
  }
  process.exit(2);
});
