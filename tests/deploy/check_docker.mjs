#!/usr/bin/env node
// Lints the Dockerfiles without a container engine: dockerfile-utils' validator (the rules of
// the VS Code Docker extension: syntax, flags, instruction arguments) must report nothing, and
// then rules of our own:
//  - every stage is named (FROM ... AS name) and every base image has a tag or digest, not latest;
//  - COPY --from names an earlier stage; no ADD of URLs (unchecked downloads);
//  - the final stage runs as a non-root USER, has a HEALTHCHECK, ENTRYPOINT ["qsearch"], EXPOSEs
//    the metrics port, and installs no build tools (compilers, cmake, -dev packages);
//  - apt-get install uses --no-install-recommends and the same RUN removes the package lists.
//
//   node check_docker.mjs docker/Dockerfile docker/Dockerfile.cuda
//   node check_docker.mjs --self-test docker/Dockerfile   # breaks it on purpose, expects reports
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { DockerfileParser } from "dockerfile-ast";
import { validate as lint } from "dockerfile-utils";

const BUILD_TOOLS = /^(build-essential|cmake|ninja-build|make|pkg-config|gcc(-\d+)?|g\+\+(-\d+)?|clang(-\d+)?|nvidia-cuda-toolkit|nvidia-cuda-dev|protobuf-compiler(-grpc)?|git|[\w.+-]+-dev)$/;

// Shell words of a RUN's `apt-get install` commands (variables and flags left out).
function aptInstalls(runText) {
  const pkgs = [];
  const problems = [];
  const text = runText.replace(/\\\n/g, " ");
  for (const cmd of text.split(/&&|;|\|\||\bthen\b|\belse\b/)) {
    const words = cmd.trim().split(/\s+/);
    const i = words.indexOf("install");
    if (words[0] !== "apt-get" && !(words.includes("apt-get") && i > words.indexOf("apt-get"))) continue;
    if (i < 0) continue;
    if (!words.includes("--no-install-recommends")) problems.push("apt-get install without --no-install-recommends");
    for (const w of words.slice(i + 1)) {
      if (w.startsWith("-") || w.includes("$")) continue;
      pkgs.push(w.replace(/[=].*$/, ""));
    }
  }
  if (pkgs.length && !/rm -rf \/var\/lib\/apt\/lists/.test(text)) problems.push("apt-get install without removing /var/lib/apt/lists in the same RUN");
  return { pkgs, problems };
}

export function checkDockerfile(content, name = "Dockerfile") {
  const errors = [];
  const err = (line, msg) => errors.push(`${name}:${line + 1}: ${msg}`);
  for (const d of lint(content, {})) err(d.range.start.line, `dockerfile-utils: ${d.message}`);

  const df = DockerfileParser.parse(content);
  const instructions = df.getInstructions();
  const stages = [];
  let current = null;
  for (const ins of instructions) {
    const kw = ins.getKeyword();
    const line = ins.getRange().start.line;
    if (kw === "FROM") {
      const stage = ins.getBuildStage();
      if (!stage) err(line, "unnamed stage: FROM ... AS <name>");
      if (stages.some((s) => s.name === stage)) err(line, `stage ${stage} defined twice`);
      // Resolve a FROM ${ARG} through the global ARGs.
      let image = ins.getImage() ?? "";
      image = image.replace(/\$\{?(\w+)\}?/g, (_, v) => {
        const arg = df.getInitialARGs().find((a) => a.getProperty()?.getName() === v);
        return arg?.getProperty()?.getValue() ?? `$${v}`;
      });
      const isStage = stages.some((s) => s.name === image);
      if (!isStage && (!/(:[\w][\w.-]*|@sha256:[0-9a-f]{64})$/.test(image) || /:latest$/.test(image))) {
        err(line, `base image ${image} has no pinned tag or digest`);
      }
      current = { name: stage, line, image, ins: [] };
      stages.push(current);
      continue;
    }
    if (!current) continue;
    current.ins.push(ins);
    if (kw === "COPY") {
      const from = ins.getFlags().find((f) => f.getName() === "from");
      if (from) {
        const idx = stages.findIndex((s) => s.name === from.getValue());
        if (idx < 0 || idx === stages.length - 1) err(line, `COPY --from=${from.getValue()} names no earlier stage`);
      }
    }
    if (kw === "ADD" && /https?:\/\//.test(ins.getRawArgumentsContent() ?? "")) {
      err(line, "ADD of a URL: download in a RUN with a checksum instead");
    }
    if (kw === "RUN") {
      const { problems } = aptInstalls(ins.getRawArgumentsContent() ?? "");
      problems.forEach((p) => err(line, p));
    }
  }
  if (stages.length < 2) err(0, "not a multi-stage build");
  const final = stages[stages.length - 1];
  if (!final) return errors;
  const finalIns = (kw) => final.ins.filter((i) => i.getKeyword() === kw);
  const user = finalIns("USER").pop();
  const userName = user?.getArguments()[0]?.getValue().split(":")[0];
  if (!user) err(final.line, `final stage ${final.name} sets no USER: it would run as root`);
  else if (userName === "root" || userName === "0") err(user.getRange().start.line, "final stage runs as root");
  else if (!/^\d+$/.test(userName)) err(user.getRange().start.line, `USER ${userName}: use a numeric uid (Kubernetes' runAsNonRoot cannot verify a name)`);
  const hc = finalIns("HEALTHCHECK").pop();
  if (!hc || /^\s*NONE\b/i.test(hc.getRawArgumentsContent() ?? "")) err(final.line, "final stage has no HEALTHCHECK");
  const ep = finalIns("ENTRYPOINT").pop();
  if (!ep || !/^\s*\[\s*"qsearch"\s*\]\s*$/.test(ep.getRawArgumentsContent() ?? "")) err(final.line, 'final stage needs ENTRYPOINT ["qsearch"] (exec form: signals reach the process)');
  const exposed = finalIns("EXPOSE").flatMap((e) => e.getArguments().map((a) => a.getValue().split("/")[0]));
  if (!exposed.includes("9464")) err(final.line, "final stage does not EXPOSE the metrics port 9464");
  if (hc && !(hc.getRawArgumentsContent() ?? "").includes("9464")) err(hc.getRange().start.line, "HEALTHCHECK does not check the metrics port 9464");
  for (const run of finalIns("RUN")) {
    const { pkgs } = aptInstalls(run.getRawArgumentsContent() ?? "");
    const tools = pkgs.filter((p) => BUILD_TOOLS.test(p));
    if (tools.length) err(run.getRange().start.line, `final stage installs build tools: ${tools.join(" ")}`);
  }
  for (const copy of finalIns("COPY")) {
    if (!copy.getFlags().some((f) => f.getName() === "from")) {
      err(copy.getRange().start.line, "final stage copies from the build context: only built artifacts belong there");
    }
  }
  return errors;
}

const MUTATIONS = [
  ["root final stage", (s) => s.replace(/^USER .*$/m, "USER root"), /runs as root/],
  ["no USER", (s) => s.replace(/^USER .*$/m, ""), /sets no USER/],
  ["named USER", (s) => s.replace(/^USER .*$/m, "USER qsearch"), /numeric uid/],
  ["no HEALTHCHECK", (s) => s.replace(/^HEALTHCHECK [^\n]*\\\n[^\n]*\n/m, ""), /no HEALTHCHECK/],
  ["compilers in the final stage", (s) => s.replace(/(FROM \$\{DEBIAN_IMAGE\} AS runtime[\s\S]*?install -y --no-install-recommends \\\n)/, "$1      build-essential libgrpc++-dev \\\n"), /installs build tools: build-essential libgrpc\+\+-dev/],
  ["COPY from a stage that does not exist", (s) => s.replace("COPY --from=build", "COPY --from=builder"), /names no earlier stage/],
  ["an unnamed stage", (s) => s.replace(/^FROM (\S+) AS build$/m, "FROM $1"), /unnamed stage/],
  ["a latest base image", (s) => s.replace("ARG DEBIAN_IMAGE=debian:bookworm-slim", "ARG DEBIAN_IMAGE=debian"), /no pinned tag/],
  ["shell-form ENTRYPOINT", (s) => s.replace('ENTRYPOINT ["qsearch"]', "ENTRYPOINT qsearch"), /ENTRYPOINT \["qsearch"\]/],
  ["recommends pulled in", (s) => s.replace(/(AS runtime[\s\S]*?apt-get install -y) --no-install-recommends/, "$1"), /without --no-install-recommends/],
  ["a misspelt instruction", (s) => s.replace("WORKDIR /src", "WORKDIRR /src"), /dockerfile-utils/],
  ["a bad HEALTHCHECK flag", (s) => s.replace("--interval=15s", "--interval=15"), /dockerfile-utils/],
  ["sources copied into the final stage", (s) => s.replace("COPY --from=build /out/qsearch", "COPY server/ /src/server/\nCOPY --from=build /out/qsearch"), /copies from the build context/],
];

function selfTest(file) {
  const original = fs.readFileSync(file, "utf8");
  const base = checkDockerfile(original, file);
  if (base.length) {
    console.error(`self-test: ${file} already fails:\n  ${base.join("\n  ")}`);
    return 1;
  }
  let failed = 0;
  for (const [what, mutate, want] of MUTATIONS) {
    const broken = mutate(original);
    if (broken === original) {
      failed++;
      console.error(`self-test: ${what}: the mutation did not apply (the Dockerfile changed?)`);
      continue;
    }
    const errors = checkDockerfile(broken, file);
    if (!errors.some((e) => want.test(e))) {
      failed++;
      console.error(`self-test: ${what}: not reported as ${want}; got:\n    ${errors.join("\n    ") || "(nothing)"}`);
    }
  }
  console.log(`check_docker.mjs self-test: ${MUTATIONS.length - failed} of ${MUTATIONS.length} deliberate breakages caught`);
  return failed ? 1 : 0;
}

function main(argv) {
  if (argv[0] === "--self-test") return selfTest(argv[1]);
  let bad = 0;
  for (const file of argv) {
    const errors = checkDockerfile(fs.readFileSync(file, "utf8"), file);
    errors.forEach((e) => console.error(`  ${e}`));
    console.log(`${file}: ${errors.length ? errors.length + " problem(s)" : "ok"}`);
    bad += errors.length;
  }
  return bad ? 1 : 0;
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  process.exit(main(process.argv.slice(2)));
}
