'use strict';
// The package installs alone: `npm pack` gives a tarball that a new project outside the
// repository installs (its dependencies from the npm registry) and uses against a real
// ringd, and whose typings compile under `tsc --strict` with narrowing on `action`.

const assert = require('node:assert/strict');
const { execFile } = require('node:child_process');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { promisify } = require('node:util');
const { test, before, after } = require('node:test');
const { startRingd, CLIENT_DIR } = require('./helpers');

const run = promisify(execFile);
const devDependencies = require('../package.json').devDependencies;

let work;
let tarball;
let app;
let ringd;

async function npm(args, cwd) {
  return run('npm', args, { cwd, maxBuffer: 16 * 1024 * 1024 });
}

before(async () => {
  work = fs.mkdtempSync(path.join(os.tmpdir(), 'ringd-node-packed-'));
  const { stdout } = await npm(['pack', '--json', '--pack-destination', work], CLIENT_DIR);
  const [packed] = JSON.parse(stdout);
  tarball = { path: path.join(work, packed.filename), files: packed.files.map((file) => file.path) };

  app = path.join(work, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', private: true }));
  // --install-links is npm's default for a tarball; said out loud so a local path never symlinks.
  await npm(
    [
      'install',
      '--no-audit',
      '--no-fund',
      '--install-links',
      tarball.path,
      `typescript@${devDependencies.typescript}`,
      `@types/node@${devDependencies['@types/node']}`,
    ],
    app,
  );
  ringd = await startRingd();
});

after(async () => {
  if (ringd) await ringd.stop();
  if (work) fs.rmSync(work, { recursive: true, force: true });
});

test('the tarball carries the contract and the typings, not the tests', () => {
  for (const file of [
    'package.json',
    'index.js',
    'index.d.ts',
    'proto/ringd/v1/engine_service.proto',
    'proto/ringd/v1/admin_service.proto',
    'proto/ringd/v1/plugin.proto',
  ]) {
    assert.ok(tarball.files.includes(file), `${file} is in the tarball (${tarball.files.join(', ')})`);
  }
  assert.ok(!tarball.files.some((file) => file.startsWith('test/')), 'no tests in the tarball');
});

test('installed as a copy with its dependencies, not a link into the repository', () => {
  const installed = path.join(app, 'node_modules', '@ringd', 'client');
  assert.ok(!fs.lstatSync(installed).isSymbolicLink());
  assert.ok(fs.existsSync(path.join(app, 'node_modules', '@grpc', 'grpc-js', 'package.json')));
  assert.ok(fs.existsSync(path.join(installed, 'proto', 'ringd', 'v1', 'engine_service.proto')));
});

test('a new project calls ringd through the installed package', async () => {
  fs.writeFileSync(
    path.join(app, 'call.js'),
    `'use strict';
const { RingdClient, Ring, Action } = require('@ringd/client');
(async () => {
  const client = new RingdClient(process.argv[2], { deadlineMs: 5000 });
  const request = { method: 'POST', path: '/v1/chat/completions', headers: { 'x-tenant': 'acme' } };
  const [ingress, pre] = await client.executeRings([Ring.INGRESS, Ring.PRE_FLIGHT], {
    body: { model: 'm', messages: [{ role: 'user', content: 'the secret plan' }] },
    request,
  });
  const blocked = await client.executeRing(Ring.INGRESS, { body: {}, request: { headers: { 'x-test-block': '429' } } });
  console.log(JSON.stringify({
    resolved: require.resolve('@ringd/client'),
    tenant: ingress.metadata.tenant,
    pre: pre.action,
    content: pre.body.messages[0].content,
    blocked: blocked.action === Action.BLOCK ? blocked.block.statusCode : null,
    health: await client.health(),
  }));
  client.close();
})().catch((err) => { console.error(err); process.exit(1); });
`,
  );

  const { stdout } = await run(process.execPath, ['call.js', ringd.target], { cwd: app });

  const answer = JSON.parse(stdout);
  assert.equal(answer.resolved, fs.realpathSync(path.join(app, 'node_modules', '@ringd', 'client', 'index.js')));
  assert.equal(answer.tenant, 'acme');
  assert.equal(answer.pre, 'modify');
  assert.equal(answer.content, 'the [redacted] plan');
  assert.equal(answer.blocked, 429);
  assert.equal(answer.health, 'SERVING');
});

test('the installed typings narrow on action under tsc --strict', async () => {
  fs.copyFileSync(path.join(CLIENT_DIR, 'test', 'types', 'narrowing.ts'), path.join(app, 'narrowing.ts'));
  fs.writeFileSync(
    path.join(app, 'tsconfig.json'),
    JSON.stringify({
      compilerOptions: { strict: true, noEmit: true, skipLibCheck: true, target: 'ES2022', module: 'commonjs', moduleResolution: 'node', types: ['node'] },
      files: ['narrowing.ts'],
    }),
  );

  const tsc = path.join(app, 'node_modules', '.bin', 'tsc');
  const result = await run(tsc, ['-p', '.'], { cwd: app }).catch((err) => err);

  assert.equal(result.code ?? 0, 0, `tsc failed:\n${result.stdout}${result.stderr}`);
});
