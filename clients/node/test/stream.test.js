'use strict';
// Streamed answers: the client's streamRing against a real ringd, and the example
// gateway driven by the official `openai` npm package with `stream: true`.

const assert = require('node:assert/strict');
const { test, before, after } = require('node:test');
const OpenAI = require('openai');
const { RingdClient, status } = require('..');
const { createGateway } = require('../examples/gateway');
const { startFakeUpstream } = require('../examples/fake-upstream');
const { startRingd, listen, close, freePort, chat } = require('./helpers');

let ringd;
let upstream;
let client;
const servers = [];

before(async () => {
  ringd = await startRingd();
  upstream = await startFakeUpstream();
  client = new RingdClient(ringd.target);
});

after(async () => {
  for (const [server, gatewayClient] of servers) {
    await close(server);
    gatewayClient.close();
  }
  client.close();
  await upstream.close();
  assert.equal(await ringd.stop(), 0);
});

/** An in-process gateway; resolves to an `openai` SDK client pointed at it. */
async function sdk({ target = ringd.target, failOpen = false } = {}) {
  const gatewayClient = new RingdClient(target);
  const server = createGateway({ client: gatewayClient, upstreamUrl: upstream.url, failOpen, log: () => {} });
  servers.push([server, gatewayClient]);
  return new OpenAI({ baseURL: `${await listen(server)}/v1`, apiKey: 'unused-by-the-test-config', maxRetries: 0 });
}

const sseChunk = (content) =>
  `data: ${JSON.stringify({ id: 'chatcmpl-s', object: 'chat.completion.chunk', choices: [{ index: 0, delta: { content } }] })}`;

/** Sends `pieces` through streamRing one reply at a time; resolves to {text, last}. */
async function streamed(pieces) {
  const stream = client.streamRing({ body: chat('hi', { stream: true }) }, { deadlineMs: 30000 });
  let text = '';
  const collect = (reply) => {
    for (const chunk of reply.chunks) {
      for (const choice of JSON.parse(chunk.toString('utf8')).choices) text += choice.delta.content || '';
    }
  };
  for (const piece of pieces) {
    stream.send(sseChunk(piece));
    const reply = await stream.recv();
    if (reply.kind === 'block') return { text, last: reply };
    collect(reply);
  }
  stream.end();
  let last;
  for await (const reply of stream) {
    if (reply.kind === 'release') collect(reply);
    else last = reply;
  }
  return { text, last };
}

test('streamRing: released text is processed, done carries the assembled answer', async () => {
  const { text, last } = await streamed(['Well, ', 'da', 'rn it', ', the answer ', 'is ', 'forty-two.']);
  assert.equal(text, 'Well, d**n it, the answer is forty-two.');
  assert.equal(last.kind, 'done');
  assert.equal(last.answer.object, 'chat.completion');
  assert.equal(last.answer.choices[0].message.content, text);
  assert.ok(last.releasedChunks > 0);
  assert.deepEqual(last.results.map((r) => r.plugin), ['censor', 'stamp']);
});

test('streamRing: a block mid-stream ends it after released text', async () => {
  const { text, last } = await streamed([
    'This is a long and harmless opening sentence, ',
    'written to be released ',
    'before the ',
    'forbid',
    'den word.',
  ]);
  assert.equal(last.kind, 'block');
  assert.equal(last.block.statusCode, 451);
  assert.equal(last.decidedBy, 'censor');
  assert.ok(last.releasedChunks > 0);
  assert.ok(text.startsWith('This is a long'), text);
  assert.ok(!text.includes('forbid'), text);
});

test('streamRing: a malformed chunk rejects with INVALID_ARGUMENT', async () => {
  const stream = client.streamRing({});
  stream.send('{"choices": "nope"}');
  await assert.rejects(stream.recv(), (err) => err.code === status.INVALID_ARGUMENT && /choices/.test(err.details));
});

async function sdkText(openai, content, metadata = {}) {
  const stream = await openai.chat.completions.create({
    ...chat(content),
    stream: true,
    stream_options: { include_usage: true },
    metadata,
  });
  let text = '';
  let usage = null;
  for await (const chunk of stream) {
    for (const choice of chunk.choices) text += choice.delta.content || '';
    if (chunk.usage) usage = chunk.usage;
  }
  return { text, usage };
}

test('openai SDK, stream: true: the text is processed chunk by chunk, usage last', async () => {
  const openai = await sdk();
  const { text, usage } = await sdkText(openai, 'well darn, that is a long way round', { fake_chunk_chars: '3' });
  assert.equal(text, 'echo: well d**n, that is a long way round');
  assert.ok(usage && usage.total_tokens > 0, 'the usage chunk reaches the client');
});

test('openai SDK, stream: true: a cache hit streams', async () => {
  const openai = await sdk();
  const before = upstream.count;
  const { text } = await sdkText(openai, 'cached?');
  assert.equal(text, 'from cache');
  assert.equal(upstream.count, before, 'the upstream was not called');
});

test('openai SDK, stream: true: a mid-stream block is the SDK error', async () => {
  const openai = await sdk();
  const prompt = `${'a calm and quiet opening, '.repeat(4)}then a forbidden word`;
  let text = '';
  await assert.rejects(
    (async () => {
      const stream = await openai.chat.completions.create({
        ...chat(prompt),
        stream: true,
        metadata: { fake_chunk_chars: '10' },
      });
      for await (const chunk of stream) text += chunk.choices[0].delta.content || '';
    })(),
    (err) => err instanceof OpenAI.APIError && err.type === 'test_censored' && /forbidden word/.test(err.message),
  );
  assert.ok(text.startsWith('echo: a calm'), text);
  assert.ok(!text.includes('forbid'), text);
});

test('openai SDK, stream: true: ringd down, fail-closed is a 503, fail-open relays the upstream', async () => {
  const target = `127.0.0.1:${await freePort()}`;
  const closed = await sdk({ target });
  await assert.rejects(sdkText(closed, 'darn it'), (err) => err.status === 503 && err.type === 'ringd_unavailable');
  const open = await sdk({ target, failOpen: true });
  assert.equal((await sdkText(open, 'darn it')).text, 'echo: darn it');
});
