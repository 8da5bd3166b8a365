#!/usr/bin/env node
'use strict';
/**
 * An example LLM gateway on node's own `http` module, with its plugin rings in ringd.
 *
 * POST /v1/chat/completions (an OpenAI-style chat request):
 *
 * 1. INGRESS, PRE_FLIGHT and ROUTING in one ExecuteRings call (it stops at the first
 *    BLOCK or CACHE_HIT and carries body and metadata from ring to ring itself).
 *    BLOCK -> its HTTP status with {error: {type, message}}; CACHE_HIT -> the cached
 *    answer, upstream not called (header x-ringd-cache: hit).
 * 2. The final body from ringd (a MODIFY included) goes to the upstream.
 * 3. POST_FLIGHT with the upstream answer as `response_json` and the metadata
 *    carried from ROUTING's answer; its final response is what the client gets.
 * 4. BACKGROUND, fire and forget, after the client has its answer.
 *
 * With `"stream": true` the answer is server-sent events: the upstream's events go
 * through ringd's StreamRing (POST_FLIGHT chunk by chunk; ringd queues BACKGROUND
 * itself), each released chunk is written as `data: <chunk>` at once, then
 * `data: [DONE]`. A block before anything was released is a plain HTTP error, after
 * that an SSE error event and a clean close. A CACHE_HIT is replayed as SSE. ringd
 * failing mid-stream: fail-open relays the rest of the upstream's events unprocessed
 * (header x-ringd-bypassed when nothing was written yet); fail-closed ends the stream
 * with an error event of type ringd_unavailable.
 *
 * ringd unreachable (or any gRPC error but INVALID_ARGUMENT): 503
 * {error: {type: "ringd_unavailable"}}; with fail-open the rings are skipped, the
 * client's body goes upstream unchanged and the answer carries the header
 * x-ringd-bypassed naming the skipped rings.
 *
 * Settings (flag, else env, else default):
 *   --ringd     RINGD_TARGET        ringd address (host:port or unix:/path)   127.0.0.1:50051
 *   --upstream  UPSTREAM_URL        upstream base URL; empty starts the fake upstream
 *   --port      PORT                listen port, 0 for an ephemeral one       8080
 *   --host      HOST                listen address                            127.0.0.1
 *   --fail-open RINGD_FAIL_OPEN=1   pass through to upstream when ringd is down
 *               RINGD_DEADLINE_MS   deadline of each ringd call (ms)          2000
 *
 *   node examples/gateway.js --port 0    # prints "gateway listening on http://127.0.0.1:PORT"
 */

const http = require('node:http');
const https = require('node:https');
const { randomUUID } = require('node:crypto');
const { parseArgs } = require('node:util');
// In your own gateway: require('@ringd/client').
const { RingdClient, Ring, Action, carry, status } = require('..');
const { startFakeUpstream } = require('./fake-upstream');

const PRE_UPSTREAM_RINGS = [Ring.INGRESS, Ring.PRE_FLIGHT, Ring.ROUTING];
const MAX_BODY_BYTES = 4 * 1024 * 1024;

class HttpError extends Error {
  constructor(statusCode, type, message) {
    super(message);
    this.statusCode = statusCode;
    this.type = type;
  }
}

function sendJSON(res, statusCode, data, headers = {}) {
  const bytes = Buffer.isBuffer(data) ? data : Buffer.from(JSON.stringify(data));
  res.writeHead(statusCode, {
    ...headers,
    'content-type': 'application/json',
    'content-length': bytes.length,
  });
  res.end(bytes);
}

function sendError(res, statusCode, type, message, headers = {}) {
  sendJSON(res, statusCode, { error: { type, message } }, headers);
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > MAX_BODY_BYTES) {
        // Answered at once; node discards the rest of the body.
        reject(new HttpError(413, 'request_too_large', `body over ${MAX_BODY_BYTES} bytes`));
        return;
      }
      chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks)));
    req.on('error', reject);
  });
}

/** POSTs the chat request to the upstream; resolves to its http.IncomingMessage. */
function openUpstream(upstreamUrl, bodyJson, headers) {
  const url = new URL(`${upstreamUrl.replace(/\/+$/, '')}/v1/chat/completions`);
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = transport.request(
      url,
      {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'content-length': bodyJson.length },
      },
      resolve,
    );
    req.on('error', reject);
    req.end(bodyJson);
  });
}

/** Server-sent events from a readable: each event's lines, without the blank line that ends it. */
async function* sseEvents(readable) {
  let buffer = '';
  for await (const piece of readable) {
    buffer += piece.toString('utf8').replace(/\r\n?/g, '\n');
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      const event = buffer.slice(0, end).replace(/^\n+/, '');
      buffer = buffer.slice(end + 2);
      if (event) yield event;
    }
  }
  if (buffer.trim()) yield buffer.trim();
}

const isDone = (event) => event.replace(/^data:/, '').trim() === '[DONE]';

/** Writes server-sent events to the client; status and headers go out with the first. */
class SseWriter {
  constructor(res, headers) {
    this.res = res;
    this.headers = headers;
    this.started = false;
  }

  event(lines) {
    if (!this.started) {
      this.started = true;
      this.res.writeHead(200, { ...this.headers, 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      this.res.flushHeaders();
    }
    this.res.write(`${lines}\n\n`); // node's http writes (flushes) each chunk at once
  }

  data(payload) {
    this.event(`data: ${Buffer.isBuffer(payload) ? payload.toString('utf8') : JSON.stringify(payload)}`);
  }

  /** OpenAI's error shape: data: {"error": {...}}. */
  error(statusCode, type, message) {
    this.data({ error: { message, type, code: statusCode } });
  }

  close() {
    this.res.end();
  }
}

/** A cached chat.completion as chunk events (role and content, finish, usage) and [DONE]. */
function replaySSE(res, cached, headers) {
  const out = new SseWriter(res, headers);
  const base = { id: cached.id, object: 'chat.completion.chunk', created: cached.created, model: cached.model };
  for (const choice of cached.choices || []) {
    const message = choice.message || {};
    const delta = { role: 'assistant', content: message.content ?? null };
    if (Array.isArray(message.tool_calls)) delta.tool_calls = message.tool_calls.map((call, index) => ({ ...call, index }));
    out.data({ ...base, choices: [{ index: choice.index, delta, finish_reason: null }] });
    out.data({ ...base, choices: [{ index: choice.index, delta: {}, finish_reason: choice.finish_reason }] });
  }
  if (cached.usage) out.data({ ...base, choices: [], usage: cached.usage });
  out.event('data: [DONE]');
  out.close();
}

/** POSTs the chat request to the upstream; resolves to {statusCode, headers, bytes}. */
function postUpstream(upstreamUrl, bodyJson, headers) {
  const url = new URL(`${upstreamUrl.replace(/\/+$/, '')}/v1/chat/completions`);
  const transport = url.protocol === 'https:' ? https : http;
  return new Promise((resolve, reject) => {
    const req = transport.request(
      url,
      {
        method: 'POST',
        headers: { ...headers, 'content-type': 'application/json', 'content-length': bodyJson.length },
      },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () =>
          resolve({ statusCode: res.statusCode, headers: res.headers, bytes: Buffer.concat(chunks) }),
        );
        res.on('error', reject);
      },
    );
    req.on('error', reject);
    req.end(bodyJson);
  });
}

function parseObject(bytes) {
  try {
    const value = JSON.parse(bytes.toString('utf8'));
    return value && typeof value === 'object' && !Array.isArray(value) ? value : null;
  } catch {
    return null;
  }
}

/**
 * The request handler. `options`: {client, upstreamUrl, failOpen, deadlineMs, log}.
 */
function createHandler({ client, upstreamUrl, failOpen = false, deadlineMs = 2000, log = console.error }) {
  /** A failed ringd call: INVALID_ARGUMENT is the request's fault; anything else is ringd down. */
  function ringdFailed(err, rings) {
    if (typeof err.code !== 'number') throw err; // not a gRPC error: a bug, answered 500 below
    if (err.code === status.INVALID_ARGUMENT) {
      throw new HttpError(400, 'invalid_request_error', err.details);
    }
    log(`ringd ${rings.join(',')}: ${status[err.code] || err.code}: ${err.details}`);
    if (!failOpen) {
      throw new HttpError(503, 'ringd_unavailable', `plugin service unavailable (${status[err.code]})`);
    }
    return rings;
  }

  async function handle(req, res) {
    const url = new URL(req.url, 'http://gateway');
    if (url.pathname !== '/v1/chat/completions') {
      throw new HttpError(404, 'not_found', `no route ${url.pathname}`);
    }
    if (req.method !== 'POST') throw new HttpError(405, 'method_not_allowed', 'use POST');
    const raw = await readBody(req);
    const parsed = parseObject(raw);
    if (!parsed) {
      throw new HttpError(400, 'invalid_request_error', 'the body must be a JSON object');
    }
    const streaming = parsed.stream === true;

    const requestId = req.headers['x-request-id'] || randomUUID();
    const callOptions = { deadlineMs, traceparent: req.headers.traceparent, tracestate: req.headers.tracestate };
    let context = {
      bodyJson: raw,
      request: {
        method: req.method,
        path: req.url,
        headers: req.headers,
        clientAddress: req.socket.remoteAddress || '',
      },
      requestId,
      sessionId: req.headers['x-session-id'] || '',
    };
    const bypassed = [];
    const answerHeaders = { 'x-request-id': requestId };

    // 1. INGRESS, PRE_FLIGHT, ROUTING: one call, stops at the first BLOCK or CACHE_HIT.
    let outcomes = null;
    try {
      outcomes = await client.executeRings(PRE_UPSTREAM_RINGS, context, callOptions);
    } catch (err) {
      bypassed.push(...ringdFailed(err, PRE_UPSTREAM_RINGS));
    }
    if (outcomes) {
      const last = outcomes[outcomes.length - 1];
      if (last.action === Action.BLOCK) {
        const { statusCode, errorType, message, headers } = last.block;
        sendError(res, statusCode, errorType, message, { ...headers, ...answerHeaders }); // e.g. Retry-After
        return;
      }
      if (last.action === Action.CACHE_HIT) {
        if (streaming) {
          replaySSE(res, last.cachedResponse, { ...answerHeaders, 'x-ringd-cache': 'hit' });
          background(carry(last, { ...context, responseJson: last.cachedResponseJson }), callOptions);
          return;
        }
        sendJSON(res, 200, last.cachedResponseJson, { ...answerHeaders, 'x-ringd-cache': 'hit' });
        background(carry(last, { ...context, responseJson: last.cachedResponseJson }), callOptions);
        return;
      }
      context = carry(last, context); // final body (MODIFY included) and metadata
    }

    if (streaming) {
      await handleStream(req, res, context, bypassed, answerHeaders, callOptions);
      return;
    }

    // 2. The upstream gets ringd's final body.
    let upstream;
    try {
      upstream = await postUpstream(upstreamUrl, context.bodyJson, {
        'x-request-id': requestId,
        ...(req.headers.traceparent ? { traceparent: req.headers.traceparent } : {}),
      });
    } catch (err) {
      throw new HttpError(502, 'upstream_unavailable', `upstream: ${err.message}`);
    }
    const upstreamAnswer = parseObject(upstream.bytes);
    if (upstream.statusCode < 200 || upstream.statusCode >= 300 || !upstreamAnswer) {
      // An upstream error is the client's answer as it is; there is nothing to post-process.
      res.writeHead(upstream.statusCode, {
        ...answerHeaders,
        'content-type': upstream.headers['content-type'] || 'application/json',
      });
      res.end(upstream.bytes);
      return;
    }

    // 3. POST_FLIGHT with the upstream answer; metadata carried from ROUTING.
    let answer = upstream.bytes;
    context = { ...context, responseJson: upstream.bytes };
    try {
      const post = await client.executeRing(Ring.POST_FLIGHT, context, callOptions);
      if (post.action === Action.BLOCK) {
        const { statusCode, errorType, message, headers } = post.block;
        sendError(res, statusCode, errorType, message, { ...headers, ...answerHeaders });
        return;
      }
      answer = post.action === Action.CACHE_HIT ? post.cachedResponseJson : post.responseJson || answer;
      context = { ...carry(post, context), responseJson: answer };
    } catch (err) {
      bypassed.push(...ringdFailed(err, [Ring.POST_FLIGHT]));
    }
    if (bypassed.length) answerHeaders['x-ringd-bypassed'] = bypassed.join(',');
    sendJSON(res, 200, answer, answerHeaders);

    // 4. BACKGROUND: after the answer, not awaited.
    if (!bypassed.length) background(context, callOptions);
  }

  /** A "stream": true request: the upstream's events through StreamRing, one chunk and one reply at a time. */
  async function handleStream(req, res, context, bypassed, answerHeaders, callOptions) {
    let upstream;
    try {
      upstream = await openUpstream(upstreamUrl, context.bodyJson, {
        'x-request-id': context.requestId,
        ...(req.headers.traceparent ? { traceparent: req.headers.traceparent } : {}),
      });
    } catch (err) {
      throw new HttpError(502, 'upstream_unavailable', `upstream: ${err.message}`);
    }
    const contentType = upstream.headers['content-type'] || '';
    if (upstream.statusCode < 200 || upstream.statusCode >= 300 || !contentType.startsWith('text/event-stream')) {
      // An upstream error (or an answer that is not a stream) is the client's answer as it is.
      res.writeHead(upstream.statusCode, { ...answerHeaders, 'content-type': contentType || 'application/json' });
      upstream.pipe(res);
      return;
    }
    const events = sseEvents(upstream);
    const relay = async () => {
      for (let next = await events.next(); !next.done; next = await events.next()) out.event(next.value);
      out.close();
    };
    const out = new SseWriter(res, answerHeaders);
    if (bypassed.length) {
      answerHeaders['x-ringd-bypassed'] = bypassed.join(',');
      await relay();
      return;
    }
    // POST_FLIGHT chunk by chunk; BACKGROUND is ringd's (queued on the assembled answer).
    const stream = client.streamRing(context, {
      traceparent: callOptions.traceparent,
      tracestate: callOptions.tracestate,
    });
    let clientGone = false;
    res.on('close', () => {
      if (res.writableFinished) return;
      clientGone = true; // the client went away: ringd frees the stream, the upstream is dropped
      stream.cancel();
      upstream.destroy();
    });
    /** Writes one reply; true when the stream is over (block or done). */
    const handleReply = (reply) => {
      if (reply.kind === 'release') {
        for (const chunk of reply.chunks) out.data(chunk);
        return false;
      }
      if (reply.kind === 'block') {
        const { statusCode, errorType, message, headers } = reply.block;
        if (reply.releasedChunks === 0 && !out.started) {
          sendError(res, statusCode, errorType, message, { ...headers, ...answerHeaders });
          return true;
        }
        out.error(statusCode, errorType, message);
      } else {
        out.event('data: [DONE]');
      }
      out.close();
      return true;
    };
    try {
      for (let next = await events.next(); !next.done; next = await events.next()) {
        if (isDone(next.value)) break; // ours is written after `done`
        stream.send(next.value);
        const reply = await stream.recv();
        if (!reply) throw Object.assign(new Error('StreamRing ended early'), { code: status.INTERNAL });
        if (handleReply(reply)) {
          upstream.destroy();
          return;
        }
      }
      stream.end();
      for (let reply = await stream.recv(); reply; reply = await stream.recv()) {
        if (handleReply(reply)) return;
      }
      throw Object.assign(new Error('StreamRing ended without done'), { code: status.INTERNAL });
    } catch (err) {
      if (clientGone) return; // nobody left to answer
      if (typeof err.code !== 'number') throw err; // not a gRPC error: a bug, answered 500
      log(`ringd stream_ring: ${status[err.code] || err.code}: ${err.details || err.message}`);
      stream.cancel();
      if (failOpen) {
        if (!out.started) answerHeaders['x-ringd-bypassed'] = 'post_flight';
        await relay();
        return;
      }
      if (!out.started) {
        if (err.code === status.INVALID_ARGUMENT) throw new HttpError(400, 'invalid_request_error', err.details);
        throw new HttpError(503, 'ringd_unavailable', `plugin service unavailable (${status[err.code]})`);
      }
      out.error(503, 'ringd_unavailable', `plugin service unavailable (${status[err.code]})`);
      out.close();
      upstream.destroy();
    }
  }

  function background(context, callOptions) {
    client
      .executeRing(Ring.BACKGROUND, context, callOptions)
      .catch((err) => log(`ringd background: ${status[err.code] || ''} ${err.details || err.message}`));
  }

  return (req, res) => {
    handle(req, res).catch((err) => {
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      if (err instanceof HttpError) {
        sendError(res, err.statusCode, err.type, err.message);
        return;
      }
      log(`gateway: ${err.stack || err}`);
      sendError(res, 500, 'internal_error', 'internal gateway error');
    });
  };
}

/** An http.Server for the gateway (not listening yet). Same options as createHandler. */
function createGateway(options) {
  return http.createServer(createHandler(options));
}

function settings(argv = process.argv.slice(2), env = process.env) {
  const { values } = parseArgs({
    args: argv,
    options: {
      ringd: { type: 'string' },
      upstream: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      'fail-open': { type: 'boolean' },
    },
  });
  const truthy = (value) => ['1', 'true', 'yes', 'on'].includes(String(value || '').toLowerCase());
  return {
    ringdTarget: values.ringd || env.RINGD_TARGET || '127.0.0.1:50051',
    upstreamUrl: values.upstream ?? env.UPSTREAM_URL ?? '',
    port: Number(values.port ?? env.PORT ?? 8080),
    host: values.host || env.HOST || '127.0.0.1',
    failOpen: Boolean(values['fail-open']) || truthy(env.RINGD_FAIL_OPEN),
    deadlineMs: Number(env.RINGD_DEADLINE_MS || 2000),
  };
}

async function main() {
  const config = settings();
  let fakeUpstream = null;
  if (!config.upstreamUrl) {
    fakeUpstream = await startFakeUpstream();
    config.upstreamUrl = fakeUpstream.url;
    console.log(`fake upstream listening on ${fakeUpstream.url}`);
  }
  const client = new RingdClient(config.ringdTarget, { deadlineMs: config.deadlineMs });
  const server = createGateway({ client, ...config });
  server.listen(config.port, config.host, () => {
    const { port } = server.address();
    console.log(`gateway listening on http://${config.host}:${port}`);
    console.log(`ringd ${config.ringdTarget}, upstream ${config.upstreamUrl}, fail-${config.failOpen ? 'open' : 'closed'}`);
  });
  const stop = () => {
    server.close();
    server.closeAllConnections();
    client.close();
    if (fakeUpstream) fakeUpstream.close();
  };
  process.once('SIGINT', stop);
  process.once('SIGTERM', stop);
}

module.exports = { createGateway, createHandler, settings };

if (require.main === module) {
  main().catch((err) => {
    console.error(err);
    process.exit(1);
  });
}
