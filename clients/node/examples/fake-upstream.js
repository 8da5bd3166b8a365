#!/usr/bin/env node
'use strict';
/**
 * A fake OpenAI-compatible upstream for the example gateway and its tests.
 *
 * POST /v1/chat/completions answers a chat completion that echoes the request's
 * model and last message ("echo: <content>"). GET /_calls answers
 * {count, requests} with every request body it has seen, so a test can check
 * what went upstream and whether anything did.
 *
 * With `"stream": true` it answers server-sent events: a role chunk, the content
 * cut into chunks, a finish chunk, a usage-only chunk when
 * `stream_options.include_usage` is set, then `data: [DONE]`. The request's
 * `metadata` object steers it (OpenAI's own field; ringd's cache ignores it):
 * `fake_cuts` ("5,12,40": cut the content at these character offsets), else
 * `fake_chunk_chars` (cut every N characters, default 8); `fake_append` (text
 * appended to the echoed content, e.g. a secret); `fake_delay_ms` (pause before each
 * content chunk).
 *
 *   node examples/fake-upstream.js [port]    # prints "fake upstream listening on http://127.0.0.1:PORT"
 */

const http = require('node:http');

function sendJSON(res, statusCode, data) {
  const bytes = Buffer.from(JSON.stringify(data));
  res.writeHead(statusCode, { 'content-type': 'application/json', 'content-length': bytes.length });
  res.end(bytes);
}

/** The chat completion the fake upstream answers `body` with. */
function completion(body, number) {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const last = messages.length ? messages[messages.length - 1] : {};
  const content = `echo: ${last && typeof last.content === 'string' ? last.content : ''}${steer(body).append}`;
  const promptTokens = messages.length;
  const completionTokens = content.split(/\s+/).length;
  return {
    id: `chatcmpl-fake-${number}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model: body.model || '',
    choices: [{ index: 0, message: { role: 'assistant', content }, finish_reason: 'stop' }],
    usage: {
      prompt_tokens: promptTokens,
      completion_tokens: completionTokens,
      total_tokens: promptTokens + completionTokens,
    },
  };
}

/** What the request's `metadata` asks of the fake upstream. */
function steer(body) {
  const meta = body && typeof body.metadata === 'object' && body.metadata ? body.metadata : {};
  const cuts = typeof meta.fake_cuts === 'string'
    ? meta.fake_cuts.split(',').map((field) => Number(field.trim())).filter((n) => Number.isInteger(n) && n > 0)
    : [];
  return {
    cuts,
    chunkChars: Number(meta.fake_chunk_chars) > 0 ? Number(meta.fake_chunk_chars) : 8,
    append: typeof meta.fake_append === 'string' ? meta.fake_append : '',
    delayMs: Number(meta.fake_delay_ms) > 0 ? Number(meta.fake_delay_ms) : 0,
  };
}

/** `text` cut (by characters) at `cuts`, else every `chunkChars` characters. */
function pieces(text, cuts, chunkChars) {
  const chars = Array.from(text);
  const at = cuts.length ? cuts : [];
  if (!at.length) for (let i = chunkChars; i < chars.length; i += chunkChars) at.push(i);
  const out = [];
  let start = 0;
  for (const cut of at) {
    if (cut > start && cut < chars.length) {
      out.push(chars.slice(start, cut).join(''));
      start = cut;
    }
  }
  out.push(chars.slice(start).join(''));
  return out;
}

/** Answers `body` as server-sent events, one chat.completion.chunk each. */
async function streamAnswer(res, body, number) {
  const answer = completion(body, number);
  const how = steer(body);
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const base = { id: answer.id, object: 'chat.completion.chunk', created: answer.created, model: answer.model };
  const write = (chunk) => res.write(`data: ${JSON.stringify({ ...base, ...chunk })}\n\n`);
  write({ choices: [{ index: 0, delta: { role: 'assistant', content: '' }, finish_reason: null }] });
  for (const piece of pieces(answer.choices[0].message.content, how.cuts, how.chunkChars)) {
    if (how.delayMs) await new Promise((resolve) => setTimeout(resolve, how.delayMs));
    if (res.destroyed) return; // the client went away
    write({ choices: [{ index: 0, delta: { content: piece }, finish_reason: null }] });
  }
  write({ choices: [{ index: 0, delta: {}, finish_reason: 'stop' }] });
  if (body.stream_options && body.stream_options.include_usage === true) {
    write({ choices: [], usage: answer.usage });
  }
  res.end('data: [DONE]\n\n');
}

/**
 * Starts the fake upstream. Resolves to {url, port, requests, count, close()}:
 * `requests` holds each chat request body it received, in order.
 */
function startFakeUpstream({ port = 0, host = '127.0.0.1' } = {}) {
  const requests = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on('data', (chunk) => chunks.push(chunk));
    req.on('end', () => {
      if (req.method === 'GET' && req.url === '/_calls') {
        sendJSON(res, 200, { count: requests.length, requests });
        return;
      }
      if (req.method !== 'POST' || req.url !== '/v1/chat/completions') {
        sendJSON(res, 404, { error: { type: 'not_found', message: `no route ${req.method} ${req.url}` } });
        return;
      }
      let body;
      try {
        body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
      } catch (err) {
        sendJSON(res, 400, { error: { type: 'invalid_request_error', message: err.message } });
        return;
      }
      requests.push(body);
      if (body && body.stream === true) {
        streamAnswer(res, body, requests.length).catch((err) => res.destroy(err));
        return;
      }
      sendJSON(res, 200, completion(body, requests.length));
    });
  });
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      const bound = server.address().port;
      resolve({
        url: `http://${host}:${bound}`,
        port: bound,
        server,
        requests,
        get count() {
          return requests.length;
        },
        close: () =>
          new Promise((done) => {
            server.close(() => done());
            server.closeAllConnections();
          }),
      });
    });
  });
}

module.exports = { startFakeUpstream, completion, pieces };

if (require.main === module) {
  startFakeUpstream({ port: Number(process.argv[2] || process.env.PORT || 0) }).then((upstream) => {
    console.log(`fake upstream listening on ${upstream.url}`);
    const stop = () => upstream.close().then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
