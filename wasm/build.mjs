// Builds every src/*.ts into <outdir>/<name>.wasm with the AssemblyScript compiler.
//   node build.mjs modules            rebuild the committed modules
//   node build.mjs --check modules    build into a temporary folder and fail when any
//                                     committed module differs (the drift check)
import asc from "assemblyscript/asc";
import { mkdtempSync, readdirSync, readFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

const args = process.argv.slice(2);
const check = args[0] === "--check";
const committed = check ? args[1] : args[0];
if (!committed) {
  console.error("usage: node build.mjs [--check] OUTDIR");
  process.exit(2);
}
const outdir = check ? mkdtempSync(join(tmpdir(), "ringd-wasm-")) : committed;
const names = readdirSync("src").filter((f) => f.endsWith(".ts")).map((f) => f.slice(0, -3)).sort();

let failed = false;
for (const name of names) {
  const source = readFileSync(`src/${name}.ts`, "utf8");
  const options = [`src/${name}.ts`, "--outFile", join(outdir, `${name}.wasm`), "--optimize", "--runtime", "incremental"];
  if (source.startsWith("// build: wasi")) {
    // WASI's shim (its own abort); Extism runs `_initialize`, not `_start`, before the first call.
    options.push("--config", "node_modules/@assemblyscript/wasi-shim/asconfig.json", "--exportStart", "_initialize");
  } else {
    // A module with its own abort handler (a self-contained example) uses it; the others share lib/'s.
    const own = source.includes("function trapOnAbort");
    options.push("--use", `abort=${own ? `src/${name}/trapOnAbort` : "src/lib/protocol/trapOnAbort"}`);
  }
  const { error, stderr } = await asc.main(options);
  if (error) {
    console.error(`${name}: ${error.message}\n${stderr.toString()}`);
    failed = true;
  }
}
if (check) {
  for (const name of names) {
    const built = join(outdir, `${name}.wasm`);
    const mine = join(committed, `${name}.wasm`);
    if (!existsSync(built)) continue;
    if (!existsSync(mine)) {
      console.error(`wasm/${mine} is missing: run \`make wasm\` and commit it`);
      failed = true;
    } else if (!readFileSync(built).equals(readFileSync(mine))) {
      console.error(`wasm/${mine} differs from its source wasm/src/${name}.ts: run \`make wasm\` and commit it`);
      failed = true;
    }
  }
  rmSync(outdir, { recursive: true, force: true });
}
if (failed) process.exit(1);
console.log(`${check ? "checked" : "built"} ${names.length} modules in ${committed}/`);
