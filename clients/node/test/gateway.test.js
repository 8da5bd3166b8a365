'use strict';
// The example gateway driven over HTTP, with a real ringd and the fake upstream.

const assert = require('node:assert/strict');
const { spawn } = require('node:child_process');
const fs = require('node:fs');
const path = require('node:path');
const readline = require('node:readline');
const { test, before, after, beforeEach } = require('node:test');
const { RingdClient } = require('..');
const { createGateway } = require('../examples/gateway');
const { startFakeUpstream } = require('../examples/fake-upstream');
const { startRingd, freePort, listen, close, postJSON, eventually, chat, CLIENT_DIR } = require('./helpers');

let ringd;
let upstream;
let url; // the in-process gateway over ringd, fail-closed
const started = []; // [server, client] pairs to stop after the suite

before(async () => {
  ringd = await startRingd();
  upstream = await startFakeUpstream();
  url = await gateway();
});

after(async () => {
  for (const [server, client] of started) {
    await close(server);
    client.close();
  }
  await upstream.close();
  assert.equal(await ringd.stop(), 0, 'ringd exits 0 on SIGTERM');
});

beforeEach(() => {
  upstream.requests.length = 0;
});

/** A gateway in this process on an ephemeral port; resolves to its chat URL. */
async function gateway({ target = ringd.target, failOpen = false } = {}) {
  const client = new RingdClient(target);
  const server = createGateway({ client, upstreamUrl: upstream.url, failOpen, deadlineMs: 2000, log: () => {} });
  started.push([server, client]);
  return `${await listen(server)}/v1/chat/completions`;
}

function backgroundLines() {
  if (!fs.existsSync(ringd.backgroundLog)) return [];
  return fs
    .readFileSync(ringd.backgroundLog, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line));
}

test('pass: upstream answers, POST_FLIGHT sees the metadata carried from INGRESS, BACKGROUND runs', async () => {
  const reply = await postJSON(url, chat('hello there'), { 'x-tenant': 'acme', 'x-request-id': 'req-pass-1' });
  assert.equal(reply.status, 200);
  assert.equal(reply.headers['x-request-id'], 'req-pass-1');
  assert.equal(reply.body.choices[0].message.content, 'echo: hello there');
  assert.equal(reply.body.model, 'gpt-test');
  assert.deepEqual(reply.body.x_ringd, { tenant: 'acme', route: 'acme/gpt-test' });
  assert.equal(upstream.count, 1);
  assert.deepEqual(upstream.requests[0], chat('hello there'));

  const line = await eventually(() => backgroundLines().find((l) => l.request_id === 'req-pass-1'));
  assert.deepEqual(line, { request_id: 'req-pass-1', tenant: 'acme', model: 'gpt-test' });
});

test('modify: the changed body is what goes upstream', async () => {
  const reply = await postJSON(url, chat('my secret is safe', { model: 'alias-fast' }));
  assert.equal(reply.status, 200);
  assert.equal(upstream.count, 1);
  assert.equal(upstream.requests[0].messages[0].content, 'my [redacted] is safe', 'PRE_FLIGHT redaction');
  assert.equal(upstream.requests[0].model, 'fast-model-v2', 'ROUTING model rewrite');
  assert.equal(reply.body.model, 'fast-model-v2');
  assert.equal(reply.body.choices[0].message.content, 'echo: my [redacted] is safe');
});

for (const code of [429, 403, 451]) {
  test(`block: HTTP ${code} with a JSON error, upstream not called`, async () => {
    const reply = await postJSON(url, chat('hi'), { 'x-test-block': String(code) });
    assert.equal(reply.status, code);
    assert.match(reply.headers['content-type'], /application\/json/);
    assert.deepEqual(reply.body, { error: { type: 'test_blocked', message: `blocked with ${code}` } });
    // The block's headers reach the client: the test plugin sets Retry-After on a 429 only.
    assert.equal(reply.headers['retry-after'], code === 429 ? '7' : undefined);
    assert.equal(upstream.count, 0);
  });
}

test('cache hit: the cached answer, upstream not called', async () => {
  const reply = await postJSON(url, chat('cached?'));
  assert.equal(reply.status, 200);
  assert.equal(reply.headers['x-ringd-cache'], 'hit');
  assert.equal(reply.body.id, 'chatcmpl-cached');
  assert.equal(reply.body.choices[0].message.content, 'from cache');
  assert.equal(upstream.count, 0);
});

test('ringd down: 503 with a JSON error, upstream not called', async () => {
  const down = await gateway({ target: `127.0.0.1:${await freePort()}` });
  const reply = await postJSON(down, chat('hello'));
  assert.equal(reply.status, 503);
  assert.equal(reply.body.error.type, 'ringd_unavailable');
  assert.equal(upstream.count, 0);
});

test('ringd down, fail-open: the request passes straight through to upstream', async () => {
  const down = await gateway({ target: `127.0.0.1:${await freePort()}`, failOpen: true });
  const reply = await postJSON(down, chat('my secret', { model: 'alias-fast' }));
  assert.equal(reply.status, 200);
  assert.equal(reply.headers['x-ringd-bypassed'], 'ingress,pre_flight,routing,post_flight');
  assert.equal(reply.body.choices[0].message.content, 'echo: my secret');
  assert.deepEqual(upstream.requests, [chat('my secret', { model: 'alias-fast' })], 'body unchanged');
});

test('bad requests: invalid JSON 400, wrong path 404, wrong method 405, oversize 413', async () => {
  const invalid = await postJSON(url, '{not json');
  assert.equal(invalid.status, 400);
  assert.equal(invalid.body.error.type, 'invalid_request_error');
  const array = await postJSON(url, '[1]');
  assert.equal(array.status, 400);
  const missing = await postJSON(url.replace('/v1/chat/completions', '/v1/nothing'), chat('hi'));
  assert.equal(missing.status, 404);
  const huge = await postJSON(url, chat('x'.repeat(5 * 1024 * 1024)));
  assert.equal(huge.status, 413);
  assert.equal(huge.body.error.type, 'request_too_large');
  const get = await fetch(url);
  assert.equal(get.status, 405);
  assert.equal(upstream.count, 0);
});

test('the example runs as a program: port 0, its own fake upstream, SIGTERM stops it', async () => {
  const proc = spawn(process.execPath, [path.join(CLIENT_DIR, 'examples', 'gateway.js'), '--port', '0'], {
    env: { ...process.env, RINGD_TARGET: ringd.target, UPSTREAM_URL: '', RINGD_FAIL_OPEN: '' },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = new Promise((resolve) => proc.once('exit', (code) => resolve(code)));
  try {
    const lines = readline.createInterface({ input: proc.stdout });
    const base = await new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error('gateway did not print its port')), 10000);
      lines.on('line', (line) => {
        const match = /^gateway listening on (http:\/\/[\d.]+:\d+)$/.exec(line);
        if (match) {
          clearTimeout(timer);
          resolve(match[1]);
        }
      });
    });
    const reply = await postJSON(`${base}/v1/chat/completions`, chat('my secret', { model: 'alias-fast' }));
    assert.equal(reply.status, 200);
    assert.equal(reply.body.choices[0].message.content, 'echo: my [redacted]');
    assert.equal(reply.body.model, 'fast-model-v2');
    const blocked = await postJSON(`${base}/v1/chat/completions`, chat('hi'), { 'x-test-block': '429' });
    assert.equal(blocked.status, 429);
  } finally {
    proc.kill('SIGTERM');
  }
  assert.equal(await exited, 0);
});
