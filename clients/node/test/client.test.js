'use strict';
// The client's RPCs against a real ringd (clients/testdata/ringd-test.yaml).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { test, before, after } = require('node:test');
const { RingdClient, Ring, Action, carry, status } = require('..');
const { startRingd, freePort, eventually, chat } = require('./helpers');

let ringd;
let client;

before(async () => {
  ringd = await startRingd();
  // The test config's admin token (clients/testdata/ringd-test.yaml): admin is on TCP only with one.
  client = new RingdClient(ringd.target, { deadlineMs: 5000, adminToken: 'ringd-client-tests-admin-token' });
});

after(async () => {
  client.close();
  assert.equal(await ringd.stop(), 0, 'ringd exits 0 on SIGTERM');
});

const headers = (extra = {}) => ({ request: { method: 'POST', path: '/v1/chat/completions', headers: extra } });

test('health check answers SERVING', async () => {
  assert.equal(await client.health(), 'SERVING');
});

test('passthrough: body comes back as JSON bytes, with metadata and per-plugin results', async () => {
  const outcome = await client.executeRing(Ring.INGRESS, { body: chat('hi'), ...headers({ 'X-Tenant': 'acme' }) });
  assert.equal(outcome.ring, 'ingress');
  assert.equal(outcome.action, Action.PASSTHROUGH);
  assert.equal(outcome.ended, false);
  assert.ok(Buffer.isBuffer(outcome.bodyJson), 'answer in the caller form: body_json');
  assert.deepEqual(outcome.body, chat('hi'));
  assert.deepEqual(outcome.metadata, { tenant: 'acme' });
  assert.deepEqual(
    outcome.results.map((r) => [r.plugin, r.outcome]),
    [
      ['tenant', 'ok'],
      ['header_block', 'ok'],
    ],
  );
  assert.equal(outcome.configVersion, 'client-tests');
  assert.ok(outcome.generation >= 1);
});

test('modify: the changed body comes back', async () => {
  const outcome = await client.executeRing(Ring.PRE_FLIGHT, { body: chat('my secret plan') });
  assert.equal(outcome.action, Action.MODIFY);
  assert.equal(outcome.body.messages[0].content, 'my [redacted] plan');
});

test('block: status, error type, message and response headers', async () => {
  const outcome = await client.executeRing(Ring.INGRESS, { body: chat('hi'), ...headers({ 'x-test-block': '429' }) });
  assert.equal(outcome.action, Action.BLOCK);
  assert.equal(outcome.ended, true);
  assert.deepEqual(outcome.block, {
    statusCode: 429,
    errorType: 'test_blocked',
    message: 'blocked with 429',
    headers: { 'Retry-After': '7' },
  });
  assert.equal(outcome.decidedBy, 'header_block');
});

test('cache hit: the cached answer, as JSON bytes', async () => {
  const outcome = await client.executeRing(Ring.PRE_FLIGHT, { body: chat('cached?') });
  assert.equal(outcome.action, Action.CACHE_HIT);
  assert.ok(Buffer.isBuffer(outcome.cachedResponseJson));
  assert.equal(outcome.cachedResponse.choices[0].message.content, 'from cache');
});

test('metadata carried from one ring into the next', async () => {
  const context = { body: chat('hi', { model: 'alias-fast' }), ...headers({ 'x-tenant': 'acme' }) };
  const ingress = await client.executeRing(Ring.INGRESS, context);
  const routing = await client.executeRing(Ring.ROUTING, carry(ingress, context));
  assert.equal(routing.action, Action.MODIFY);
  assert.equal(routing.body.model, 'fast-model-v2');
  assert.deepEqual(routing.metadata, { tenant: 'acme', route: 'acme/alias-fast' });
  const post = await client.executeRing(Ring.POST_FLIGHT, {
    ...carry(routing, context),
    response: { id: 'x', choices: [] },
  });
  assert.deepEqual(post.response.x_ringd, { tenant: 'acme', route: 'acme/alias-fast' });
});

test('executeRings runs the rings in order and stops at the first block', async () => {
  const all = await client.executeRings([Ring.INGRESS, Ring.PRE_FLIGHT, Ring.ROUTING], {
    body: chat('hi', { model: 'alias-fast' }),
  });
  assert.deepEqual(
    all.map((o) => o.ring),
    ['ingress', 'pre_flight', 'routing'],
  );
  assert.equal(all[2].body.model, 'fast-model-v2');
  assert.equal(all[2].metadata.route, 'anonymous/alias-fast');

  const blocked = await client.executeRings(['ingress', 'pre_flight'], {
    body: chat('hi'),
    ...headers({ 'x-test-block': '451' }),
  });
  assert.equal(blocked.length, 1);
  assert.equal(blocked[0].block.statusCode, 451);
});

test('background is acknowledged at once and runs later', async () => {
  const outcome = await client.executeRing(Ring.BACKGROUND, {
    body: chat('hi'),
    response: { model: 'bg-model' },
    metadata: { tenant: 'bg-tenant' },
    requestId: 'req-bg-1',
  });
  assert.equal(outcome.queued, true);
  assert.deepEqual(outcome.results, []);
  const line = await eventually(() =>
    fs.existsSync(ringd.backgroundLog)
      ? fs
          .readFileSync(ringd.backgroundLog, 'utf8')
          .split('\n')
          .find((l) => l.includes('req-bg-1'))
      : null,
  );
  assert.deepEqual(JSON.parse(line), { request_id: 'req-bg-1', tenant: 'bg-tenant', model: 'bg-model' });
});

test('traceparent and a deadline pass through as call options', async () => {
  const outcome = await client.executeRing(
    'pre_flight',
    { body: chat('hi') },
    { deadlineMs: 2000, traceparent: '00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01' },
  );
  assert.equal(outcome.action, Action.PASSTHROUGH);
});

test('an already aborted call is cancelled', async () => {
  const controller = new AbortController();
  controller.abort();
  await assert.rejects(client.executeRing('ingress', { body: chat('hi') }, { signal: controller.signal }), {
    code: status.CANCELLED,
  });
});

test('bad input is INVALID_ARGUMENT naming the field', async () => {
  await assert.rejects(client.executeRing('ingress', { bodyJson: Buffer.from('[1, 2]') }), (err) => {
    assert.equal(err.code, status.INVALID_ARGUMENT);
    assert.match(err.details, /body_json/);
    return true;
  });
  await assert.rejects(client.executeRing('nowhere', {}), TypeError);
});

test('admin: list, disable and enable, reload', async () => {
  const listed = await client.listPlugins(Ring.PRE_FLIGHT);
  assert.deepEqual(
    listed.plugins.map((p) => [p.name, p.ring, p.status]),
    [
      ['redact', 'pre_flight', 'active'],
      ['cache', 'pre_flight', 'active'],
    ],
  );
  assert.equal(listed.configVersion, 'client-tests');
  assert.ok(listed.plugins[0].stats.invocations >= 1);

  assert.equal((await client.setPluginEnabled('cache', false)).status, 'disabled');
  try {
    const skipped = await client.executeRing(Ring.PRE_FLIGHT, { body: chat('cached?') });
    assert.equal(skipped.action, Action.PASSTHROUGH);
    assert.equal(skipped.results.find((r) => r.plugin === 'cache').outcome, 'skipped');
  } finally {
    assert.equal((await client.setPluginEnabled('cache', true)).status, 'active');
  }
  await assert.rejects(client.setPluginEnabled('no_such_plugin', true), { code: status.NOT_FOUND });

  const before = listed.generation;
  const reloaded = await client.reloadConfig();
  assert.equal(reloaded.generation, before + 1);
  assert.equal(reloaded.configVersion, 'client-tests');
});

test('the same calls work over a unix socket', async () => {
  const unix = new RingdClient(ringd.unixTarget);
  try {
    assert.equal(await unix.health(), 'SERVING');
    const outcome = await unix.executeRing(Ring.PRE_FLIGHT, { body: chat('cached?') });
    assert.equal(outcome.action, Action.CACHE_HIT);
  } finally {
    unix.close();
  }
});

test('ringd down: calls fail with UNAVAILABLE', async () => {
  const down = new RingdClient(`127.0.0.1:${await freePort()}`, { deadlineMs: 2000 });
  try {
    await assert.rejects(down.executeRing('ingress', { body: chat('hi') }), { code: status.UNAVAILABLE });
  } finally {
    down.close();
  }
});
