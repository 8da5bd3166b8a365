'use strict';
/**
 * @ringd/client: a gateway's client for ringd (contract `ringd.v1`, shipped in ./proto).
 *
 * One promise-returning method per RPC. Bodies travel as raw JSON bytes
 * (`body_json`), so the answer comes back as JSON bytes too; outcomes carry both
 * the bytes (`bodyJson`) and the parsed object (`body`). Carry `metadata` from
 * each outcome into the next ring's context (`carry()` does it).
 *
 *   const client = new RingdClient('127.0.0.1:50051');
 *   const pre = await client.executeRing('pre_flight', { body, request }, { deadlineMs: 200 });
 *   if (pre.action === 'block') ... pre.block.statusCode
 *
 * Types: index.d.ts.
 */

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/**
 * The contract's .proto files, shipped inside this package (proto/ringd/v1: copies that
 * `make proto` writes from the repository's proto/ and drift-checks), so an installed
 * package needs nothing from the ringd repository.
 */
const DEFAULT_PROTO_ROOT = path.join(__dirname, 'proto');
const PROTO_FILES = ['ringd/v1/engine_service.proto', 'ringd/v1/admin_service.proto'];
const LOADER_OPTIONS = { longs: Number, enums: String, defaults: true, oneofs: true };

/** The rings, in the order a gateway calls them. */
const Ring = Object.freeze({
  INGRESS: 'ingress',
  PRE_FLIGHT: 'pre_flight',
  ROUTING: 'routing',
  POST_FLIGHT: 'post_flight',
  BACKGROUND: 'background',
});
const RINGS = Object.values(Ring);

/** A ring's verdict. */
const Action = Object.freeze({
  PASSTHROUGH: 'passthrough',
  MODIFY: 'modify',
  BLOCK: 'block',
  CACHE_HIT: 'cache_hit',
});

// grpc.health.v1, described inline so the package needs no extra .proto file.
const HEALTH_JSON = {
  nested: {
    grpc: {
      nested: {
        health: {
          nested: {
            v1: {
              nested: {
                HealthCheckRequest: { fields: { service: { type: 'string', id: 1 } } },
                HealthCheckResponse: {
                  fields: { status: { type: 'ServingStatus', id: 1 } },
                  nested: {
                    ServingStatus: {
                      values: { UNKNOWN: 0, SERVING: 1, NOT_SERVING: 2, SERVICE_UNKNOWN: 3 },
                    },
                  },
                },
                Health: {
                  methods: {
                    Check: { requestType: 'HealthCheckRequest', responseType: 'HealthCheckResponse' },
                  },
                },
              },
            },
          },
        },
      },
    },
  },
};

const definitions = new Map();

/** The service constructors for one proto root, loaded once per process. */
function loadServices(protoRoot) {
  const root = path.resolve(protoRoot);
  let services = definitions.get(root);
  if (!services) {
    const ringd = grpc.loadPackageDefinition(
      protoLoader.loadSync(PROTO_FILES, { ...LOADER_OPTIONS, includeDirs: [root] }),
    ).ringd.v1;
    const health = grpc.loadPackageDefinition(protoLoader.fromJSON(HEALTH_JSON, LOADER_OPTIONS))
      .grpc.health.v1;
    services = {
      Engine: ringd.PluginEngineService,
      Admin: ringd.PluginAdminService,
      Health: health.Health,
    };
    definitions.set(root, services);
  }
  return services;
}

/** The wire enum name of a ring: accepts 'pre_flight', 'PRE_FLIGHT', 'PLUGIN_HOOK_PRE_FLIGHT' or 2. */
function ringEnum(ring) {
  if (Number.isInteger(ring) && ring >= 1 && ring <= RINGS.length) {
    return `PLUGIN_HOOK_${RINGS[ring - 1].toUpperCase()}`;
  }
  const name = String(ring).toLowerCase().replace(/^plugin_hook_/, '');
  if (!RINGS.includes(name)) {
    throw new TypeError(`unknown ring ${JSON.stringify(ring)}; expected one of ${RINGS.join(', ')}`);
  }
  return `PLUGIN_HOOK_${name.toUpperCase()}`;
}

/** 'PLUGIN_HOOK_PRE_FLIGHT' -> 'pre_flight'; '' for UNSPECIFIED. */
function lowerEnum(value, prefix) {
  const name = String(value).replace(prefix, '').toLowerCase();
  return name === 'unspecified' ? '' : name;
}

/** A JSON value as a google.protobuf.Value. */
function toValue(value) {
  if (value === null || value === undefined) return { nullValue: 'NULL_VALUE' };
  switch (typeof value) {
    case 'number':
      if (!Number.isFinite(value)) throw new TypeError(`metadata value ${value} is not JSON`);
      return { numberValue: value };
    case 'string':
      return { stringValue: value };
    case 'boolean':
      return { boolValue: value };
    case 'object':
      if (Array.isArray(value)) return { listValue: { values: value.map(toValue) } };
      return { structValue: toStruct(value) };
    default:
      throw new TypeError(`metadata value of type ${typeof value} is not JSON`);
  }
}

function toStruct(object) {
  const fields = {};
  for (const [key, item] of Object.entries(object)) {
    if (item !== undefined) fields[key] = toValue(item);
  }
  return { fields };
}

/** A google.protobuf.Value as plain JSON data. */
function fromValue(value) {
  switch (value.kind) {
    case 'numberValue':
      return value.numberValue;
    case 'stringValue':
      return value.stringValue;
    case 'boolValue':
      return value.boolValue;
    case 'structValue':
      return fromStruct(value.structValue);
    case 'listValue':
      return (value.listValue.values || []).map(fromValue);
    default:
      return null;
  }
}

function fromStruct(struct) {
  const object = {};
  for (const [key, item] of Object.entries((struct && struct.fields) || {})) {
    object[key] = fromValue(item);
  }
  return object;
}

function fromMap(map) {
  const object = {};
  for (const [key, item] of Object.entries(map || {})) object[key] = fromValue(item);
  return object;
}

function jsonBytes(json, object, field) {
  if (json !== undefined && json !== null) {
    return Buffer.isBuffer(json) ? json : Buffer.from(json instanceof Uint8Array ? json : String(json));
  }
  if (object !== undefined && object !== null) {
    if (typeof object !== 'object' || Array.isArray(object)) {
      throw new TypeError(`${field} must be a JSON object`);
    }
    return Buffer.from(JSON.stringify(object));
  }
  return undefined;
}

/** Request headers as ringd wants them: lower-case names, repeated values joined with ", ". */
function normaliseHeaders(headers) {
  const out = {};
  for (const [name, value] of Object.entries(headers || {})) {
    if (value === undefined) continue;
    out[name.toLowerCase()] = Array.isArray(value) ? value.join(', ') : String(value);
  }
  return out;
}

/** A ringd.v1.PluginContext message from a RingContext (see index.d.ts). */
function buildContext(context = {}) {
  const message = {
    metadata: {},
    sessionId: context.sessionId || '',
    requestId: context.requestId || '',
  };
  const body = jsonBytes(context.bodyJson, context.body, 'body');
  if (body) message.bodyJson = body;
  const response = jsonBytes(context.responseJson, context.response, 'response');
  if (response) message.responseJson = response;
  for (const [key, item] of Object.entries(context.metadata || {})) {
    if (item !== undefined) message.metadata[key] = toValue(item);
  }
  if (context.request) {
    message.request = {
      method: context.request.method || '',
      path: context.request.path || '',
      headers: normaliseHeaders(context.request.headers),
      clientAddress: context.request.clientAddress || '',
    };
  }
  return message;
}

/** One JSON payload oneof (body, response, cached_response) as [object, bytes]. */
function payload(message, oneof) {
  const kind = message[oneof];
  if (!kind) return [null, null];
  const data = message[kind];
  if (kind.endsWith('Json')) {
    const bytes = Buffer.from(data);
    return [JSON.parse(bytes.toString('utf8')), bytes];
  }
  const object = fromStruct(data);
  return [object, Buffer.from(JSON.stringify(object))];
}

function latencyMs(duration) {
  if (!duration) return 0;
  return Number(duration.seconds || 0) * 1000 + Number(duration.nanos || 0) / 1e6;
}

/** ringd.v1.BlockInfo as the client's BlockInfo. */
function blockInfo(block) {
  return {
    statusCode: block.statusCode || 0,
    errorType: block.errorType || '',
    message: block.message || '',
    headers: { ...(block.headers || {}) },
  };
}

/** A typed RingOutcome from an ExecuteRingResponse. */
function parseOutcome(message) {
  const action = lowerEnum(message.action, 'PLUGIN_ACTION_');
  const [body, bodyJson] = payload(message, 'body');
  const [response, responseJson] = payload(message, 'response');
  const [cachedResponse, cachedResponseJson] = payload(message, 'cachedResponse');
  const decision = message.decision
    ? {
        action: lowerEnum(message.decision.action, 'PLUGIN_ACTION_'),
        statusCode: message.decision.statusCode,
        errorType: message.decision.errorType,
        message: message.decision.message,
      }
    : null;
  return {
    ring: lowerEnum(message.ring, 'PLUGIN_HOOK_'),
    action,
    ended: action === Action.BLOCK || action === Action.CACHE_HIT,
    body,
    bodyJson,
    response,
    responseJson,
    metadata: fromMap(message.metadata),
    // Set exactly when the action is block, as the typings promise (RingOutcome narrows on action).
    block: action === Action.BLOCK ? blockInfo(message.block || {}) : null,
    cachedResponse,
    cachedResponseJson,
    decision,
    decidedBy: message.decidedBy,
    results: (message.results || []).map((result) => ({
      plugin: result.plugin,
      version: result.version,
      action: lowerEnum(result.action, 'PLUGIN_ACTION_'),
      outcome: lowerEnum(result.outcome, 'PLUGIN_OUTCOME_'),
      latencyMs: latencyMs(result.latency),
      error: result.error,
      message: result.message,
    })),
    configVersion: message.configVersion,
    generation: Number(message.generation),
    queued: Boolean(message.queued),
  };
}

/**
 * The context for the next ring: `context` with the outcome's final body and
 * metadata (and upstream answer, when it has one). Request, session and request id
 * are kept.
 */
function carry(outcome, context = {}) {
  const next = { ...context, metadata: outcome.metadata };
  delete next.body;
  if (outcome.bodyJson) next.bodyJson = outcome.bodyJson;
  if (outcome.responseJson) {
    delete next.response;
    next.responseJson = outcome.responseJson;
  }
  return next;
}

function pluginInfo(info) {
  const stats = info.stats || {};
  return {
    name: info.name,
    ring: lowerEnum(info.ring, 'PLUGIN_HOOK_'),
    version: info.version,
    author: info.author,
    description: info.description,
    entrypoint: info.entrypoint,
    priority: info.priority,
    enabled: info.enabled,
    status: lowerEnum(info.status, 'PLUGIN_STATUS_'),
    loadError: info.loadError,
    timeoutMs: latencyMs(info.timeout),
    failPolicy: lowerEnum(info.failPolicy, 'FAIL_POLICY_'),
    stats: {
      invocations: Number(stats.invocations || 0),
      errors: Number(stats.errors || 0),
      blocks: Number(stats.blocks || 0),
      timeouts: Number(stats.timeouts || 0),
      bypasses: Number(stats.bypasses || 0),
      stalls: Number(stats.stalls || 0),
      totalLatencyMs: stats.totalLatencyMs || 0,
      avgLatencyMs: stats.avgLatencyMs || 0,
      p50LatencyMs: stats.p50LatencyMs || 0,
      p95LatencyMs: stats.p95LatencyMs || 0,
      p99LatencyMs: stats.p99LatencyMs || 0,
    },
  };
}

/** A StreamRingResponse as the client's StreamReply (see index.d.ts). */
function parseStreamReply(message) {
  const results = (list) =>
    (list || []).map((result) => ({
      plugin: result.plugin,
      version: result.version,
      action: lowerEnum(result.action, 'PLUGIN_ACTION_'),
      outcome: lowerEnum(result.outcome, 'PLUGIN_OUTCOME_'),
      latencyMs: latencyMs(result.latency),
      error: result.error,
      message: result.message,
    }));
  if (message.kind === 'release') {
    return { kind: 'release', chunks: (message.release.chunks || []).map((chunk) => Buffer.from(chunk)) };
  }
  if (message.kind === 'block') {
    const blocked = message.block;
    return {
      kind: 'block',
      block: blockInfo(blocked.block || {}),
      decidedBy: blocked.decidedBy,
      releasedChunks: Number(blocked.releasedChunks),
      results: results(blocked.results),
      metadata: fromMap(blocked.metadata),
      configVersion: blocked.configVersion,
      generation: Number(blocked.generation),
      backgroundQueued: Boolean(blocked.backgroundQueued),
    };
  }
  const done = message.done;
  const answerJson = Buffer.from(done.answerJson);
  return {
    kind: 'done',
    answer: JSON.parse(answerJson.toString('utf8')),
    answerJson,
    releasedChunks: Number(done.releasedChunks),
    results: results(done.results),
    metadata: fromMap(done.metadata),
    configVersion: done.configVersion,
    generation: Number(done.generation),
    backgroundQueued: Boolean(done.backgroundQueued),
  };
}

/**
 * One streamed answer through ringd's POST_FLIGHT (the StreamRing call); made by
 * RingdClient.streamRing, which sends `open`. send() each upstream event, end() when
 * the upstream is over; the replies come out of `for await (const reply of stream)`
 * or, one at a time, `await stream.recv()` (undefined after the last). A failed
 * call rejects the iteration with a grpc ServiceError (`code`, `details`).
 */
class RingStream {
  constructor(call) {
    this._call = call;
    this._ended = false;
    this._replies = (async function* replies() {
      for await (const message of call) yield parseStreamReply(message);
    })();
  }

  /** Sends one upstream chunk: the chunk's JSON (string, Buffer or object) or the raw SSE event. */
  send(chunk) {
    let data = chunk;
    if (typeof chunk === 'string') data = Buffer.from(chunk);
    else if (!Buffer.isBuffer(chunk) && !(chunk instanceof Uint8Array)) data = Buffer.from(JSON.stringify(chunk));
    this._call.write({ chunk: { data } });
  }

  /** The upstream is over: ringd answers a release (the held tail), then done or block. */
  end() {
    if (this._ended) return;
    this._ended = true;
    this._call.write({ end: {} });
    this._call.end();
  }

  /** The next reply, or undefined after the last. */
  async recv() {
    const next = await this._replies.next();
    return next.done ? undefined : next.value;
  }

  /** Cancels the call: ringd drops what it held. Harmless after the stream finished. */
  cancel() {
    this._call.cancel();
  }

  [Symbol.asyncIterator]() {
    return this._replies;
  }
}

/** A client of one ringd server (one channel shared by every service). */
class RingdClient {
  /**
   * @param {string} [target] host:port or unix:/path; default 127.0.0.1:50051.
   * @param {import('./index').RingdClientOptions} [options]
   */
  constructor(target = '127.0.0.1:50051', options = {}) {
    const services = loadServices(options.protoRoot || DEFAULT_PROTO_ROOT);
    const credentials = options.credentials || grpc.credentials.createInsecure();
    this.target = target;
    this.deadlineMs = options.deadlineMs === undefined ? 10000 : options.deadlineMs;
    this._adminToken = options.adminToken || '';
    this._engine = new services.Engine(target, credentials, options.channelOptions || {});
    const shared = { channelOverride: this._engine.getChannel() };
    this._admin = new services.Admin(target, credentials, shared);
    this._health = new services.Health(target, credentials, shared);
  }

  /** Runs one ring. Rejects with a grpc ServiceError (`code`, `details`) when the call fails. */
  async executeRing(ring, context = {}, options = {}) {
    const request = { ring: ringEnum(ring), context: buildContext(context) };
    return parseOutcome(await this._call(this._engine, 'ExecuteRing', request, options, false));
  }

  /** Runs several rings in one call, stopping at the first block or cache hit. */
  async executeRings(rings, context = {}, options = {}) {
    const request = { rings: rings.map(ringEnum), context: buildContext(context) };
    const reply = await this._call(this._engine, 'ExecuteRings', request, options, false);
    return reply.outcomes.map(parseOutcome);
  }

  /**
   * POST_FLIGHT on a streamed answer: opens a StreamRing call and sends `open` with
   * `context` (body, ROUTING's metadata, request, requestId, sessionId; no response).
   * No default deadline (a stream lasts as long as the upstream's answer): pass
   * `deadlineMs` or `signal` to bound it.
   */
  streamRing(context = {}, options = {}) {
    const metadata = new grpc.Metadata();
    if (options.traceparent) metadata.set('traceparent', options.traceparent);
    if (options.tracestate) metadata.set('tracestate', options.tracestate);
    for (const [key, value] of Object.entries(options.metadata || {})) metadata.set(key, value);
    const callOptions = {};
    if (options.deadlineMs && Number.isFinite(options.deadlineMs)) {
      callOptions.deadline = Date.now() + options.deadlineMs;
    }
    const opening = buildContext(context);
    delete opening.responseJson;
    const call = this._engine.StreamRing(metadata, callOptions);
    call.write({ open: { context: opening } });
    const stream = new RingStream(call);
    if (options.signal) {
      if (options.signal.aborted) call.cancel();
      else options.signal.addEventListener('abort', () => call.cancel(), { once: true });
    }
    return stream;
  }

  /** Lists the loaded plugins (of one ring, when given). */
  async listPlugins(ring, options = {}) {
    const request = { ring: ring ? ringEnum(ring) : 'PLUGIN_HOOK_UNSPECIFIED' };
    const reply = await this._call(this._admin, 'ListPlugins', request, options, true);
    return {
      plugins: reply.plugins.map(pluginInfo),
      configVersion: reply.configVersion,
      generation: Number(reply.generation),
    };
  }

  /** Makes the server reread its configuration file (as SIGHUP does). */
  async reloadConfig(options = {}) {
    const reply = await this._call(this._admin, 'ReloadConfig', {}, options, true);
    return { configVersion: reply.configVersion, generation: Number(reply.generation) };
  }

  /** Enables or disables one plugin; resolves to the plugin as it is after the change. */
  async setPluginEnabled(name, enabled, options = {}) {
    const request = { name, enabled: Boolean(enabled) };
    const reply = await this._call(this._admin, 'SetPluginEnabled', request, options, true);
    return pluginInfo(reply.plugin);
  }

  /** grpc.health.v1 Check: 'SERVING', 'NOT_SERVING' (draining), ... */
  async health(service = '', options = {}) {
    const reply = await this._call(this._health, 'Check', { service }, options, false);
    return reply.status;
  }

  /** Resolves once the channel is connected, rejects after `deadlineMs`. */
  waitForReady(deadlineMs = this.deadlineMs) {
    return new Promise((resolve, reject) => {
      this._engine.waitForReady(Date.now() + deadlineMs, (err) => (err ? reject(err) : resolve()));
    });
  }

  /** Closes the channel. Calls in flight fail with CANCELLED. */
  close() {
    this._engine.close();
  }

  _call(stub, method, request, options, admin) {
    const metadata = new grpc.Metadata();
    if (options.traceparent) metadata.set('traceparent', options.traceparent);
    if (options.tracestate) metadata.set('tracestate', options.tracestate);
    for (const [key, value] of Object.entries(options.metadata || {})) metadata.set(key, value);
    if (admin && this._adminToken) metadata.set('authorization', `Bearer ${this._adminToken}`);
    const deadlineMs = options.deadlineMs === undefined ? this.deadlineMs : options.deadlineMs;
    const callOptions = {};
    if (deadlineMs && Number.isFinite(deadlineMs)) callOptions.deadline = Date.now() + deadlineMs;
    return new Promise((resolve, reject) => {
      const call = stub[method](request, metadata, callOptions, (err, reply) =>
        err ? reject(err) : resolve(reply),
      );
      if (options.signal) {
        if (options.signal.aborted) call.cancel();
        else options.signal.addEventListener('abort', () => call.cancel(), { once: true });
      }
    });
  }
}

module.exports = {
  RingdClient,
  RingStream,
  parseStreamReply,
  Ring,
  Action,
  RINGS,
  DEFAULT_PROTO_ROOT,
  status: grpc.status,
  credentials: grpc.credentials,
  buildContext,
  parseOutcome,
  carry,
  toValue,
  fromValue,
};
