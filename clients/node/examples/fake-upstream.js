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
  const content = `echo: ${last && typeof last.content === 'string' ? last.content : ''}`;
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

module.exports = { startFakeUpstream, completion };

if (require.main === module) {
  startFakeUpstream({ port: Number(process.argv[2] || process.env.PORT || 0) }).then((upstream) => {
    console.log(`fake upstream listening on ${upstream.url}`);
    const stop = () => upstream.close().then(() => process.exit(0));
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
}
