'use strict';
// prepack: the package must ship the contract it loads. Fails when proto/ringd/v1 is
// missing or, inside the ringd repository, differs from the repository's proto/
// (then run `make proto` at the repository root).

const fs = require('node:fs');
const path = require('node:path');

const packaged = path.join(__dirname, '..', 'proto', 'ringd', 'v1');
const repository = path.join(__dirname, '..', '..', '..', 'proto', 'ringd', 'v1');

function protoFiles(dir) {
  return fs.existsSync(dir) ? fs.readdirSync(dir).filter((name) => name.endsWith('.proto')).sort() : [];
}

const shipped = protoFiles(packaged);
if (shipped.length === 0) {
  console.error(`prepack: no .proto files in ${packaged}: run \`make proto\` at the repository root`);
  process.exit(1);
}
const source = protoFiles(repository);
if (source.length > 0) {
  const stale = source.filter(
    (name) =>
      !shipped.includes(name) ||
      !fs.readFileSync(path.join(packaged, name)).equals(fs.readFileSync(path.join(repository, name))),
  );
  const extra = shipped.filter((name) => !source.includes(name));
  if (stale.length > 0 || extra.length > 0) {
    console.error(
      `prepack: proto/ringd/v1 differs from the repository's proto/ (${[...stale, ...extra].join(', ')}): ` +
        'run `make proto` at the repository root',
    );
    process.exit(1);
  }
}
console.error(`prepack: shipping ${shipped.join(', ')}`);
