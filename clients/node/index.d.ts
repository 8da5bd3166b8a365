// Types of @ringd/client (index.js). The wire contract is proto/ringd/v1/*.proto.

import type { ChannelCredentials, ChannelOptions, ServiceError, status as grpcStatus } from '@grpc/grpc-js';

/** A ring name. Enum numbers (1..5) and 'PLUGIN_HOOK_*' names are accepted too. */
export type RingName = 'ingress' | 'pre_flight' | 'routing' | 'post_flight' | 'background';
export type RingLike = RingName | Uppercase<RingName> | `PLUGIN_HOOK_${Uppercase<RingName>}` | 1 | 2 | 3 | 4 | 5;
export type ActionName = 'passthrough' | 'modify' | 'block' | 'cache_hit';
/** How one plugin's call ended. */
export type OutcomeName = 'ok' | 'error' | 'timeout' | 'bypassed' | 'skipped';

export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };
export type JsonObject = { [key: string]: JsonValue };

export declare const Ring: Readonly<{
  INGRESS: 'ingress';
  PRE_FLIGHT: 'pre_flight';
  ROUTING: 'routing';
  POST_FLIGHT: 'post_flight';
  BACKGROUND: 'background';
}>;
export declare const Action: Readonly<{
  PASSTHROUGH: 'passthrough';
  MODIFY: 'modify';
  BLOCK: 'block';
  CACHE_HIT: 'cache_hit';
}>;
export declare const RINGS: readonly RingName[];
/** The contract's .proto files shipped inside this package (proto/ringd/v1/*.proto). */
export declare const DEFAULT_PROTO_ROOT: string;
/** gRPC status codes, to compare with a rejected call's `err.code`. */
export declare const status: typeof grpcStatus;
export { credentials } from '@grpc/grpc-js';

/** The client's HTTP request as the gateway saw it. */
export interface RequestInfo {
  method?: string;
  /** Path with query string, e.g. "/v1/chat/completions". */
  path?: string;
  /** Names are lower-cased; array values are joined with ", ". Node's `req.headers` fits as is. */
  headers?: Record<string, string | string[] | undefined>;
  clientAddress?: string;
}

/**
 * A ring's input (ringd.v1.PluginContext). Bodies are sent as raw JSON bytes
 * (`body_json`): pass `bodyJson` when you hold the bytes already, else `body`.
 */
export interface RingContext {
  body?: JsonObject;
  /** Raw UTF-8 JSON of an object; wins over `body`. */
  bodyJson?: Buffer | Uint8Array | string;
  /** The previous ring's `outcome.metadata`. */
  metadata?: Record<string, JsonValue>;
  /** The upstream answer (POST_FLIGHT, BACKGROUND). */
  response?: JsonObject;
  /** Raw UTF-8 JSON of the upstream answer; wins over `response`. */
  responseJson?: Buffer | Uint8Array | string;
  request?: RequestInfo;
  sessionId?: string;
  /** The same in every ring of a request; labels ringd's logs and spans. */
  requestId?: string;
}

/** Per call options. */
export interface CallOptions {
  /** Deadline in milliseconds from now (default: the client's `deadlineMs`); 0 or Infinity for none. */
  deadlineMs?: number;
  /** W3C trace context, sent as gRPC metadata so ringd's spans join the caller's trace. */
  traceparent?: string;
  tracestate?: string;
  /** Extra gRPC metadata. */
  metadata?: Record<string, string>;
  /** Cancels the call (it rejects with status CANCELLED). */
  signal?: AbortSignal;
}

export interface BlockInfo {
  /** HTTP status to answer the client with, 400..599. */
  statusCode: number;
  errorType: string;
  message: string;
  /** HTTP headers to set on the answer to the client, e.g. `{ 'Retry-After': '30' }` (may be empty). */
  headers: Record<string, string>;
}

export interface Decision {
  action: ActionName;
  statusCode: number;
  errorType: string;
  message: string;
}

export interface PluginResult {
  plugin: string;
  version: string;
  /** '' when the plugin returned no valid response. */
  action: ActionName | '';
  outcome: OutcomeName;
  latencyMs: number;
  error: string;
  message: string;
}

/** What every ring answer (ringd.v1.ExecuteRingResponse) carries, whatever its action. */
export interface RingOutcomeBase {
  ring: RingName;
  action: ActionName;
  /** True for block and cache_hit: the request stops here. */
  ended: boolean;
  /** The final body to forward upstream (parsed), and its bytes. */
  body: JsonObject | null;
  bodyJson: Buffer | null;
  /** The final upstream answer (POST_FLIGHT), and its bytes. */
  response: JsonObject | null;
  responseJson: Buffer | null;
  /** Complete metadata: send it as the next ring's `metadata`. */
  metadata: Record<string, JsonValue>;
  /** Set when action is 'block'. */
  block: BlockInfo | null;
  /** Set when action is 'cache_hit': the answer for the client. */
  cachedResponse: JsonObject | null;
  cachedResponseJson: Buffer | null;
  decision: Decision | null;
  decidedBy: string;
  results: PluginResult[];
  configVersion: string;
  generation: number;
  /** BACKGROUND only: accepted onto ringd's queue, runs later. */
  queued: boolean;
}

/** The request goes on (with the outcome's body when the action is 'modify'). */
export interface ContinueOutcome extends RingOutcomeBase {
  action: 'passthrough' | 'modify';
  ended: false;
  block: null;
  cachedResponse: null;
  cachedResponseJson: null;
}

/** The request stops: answer the client with `block`. */
export interface BlockOutcome extends RingOutcomeBase {
  action: 'block';
  ended: true;
  block: BlockInfo;
  cachedResponse: null;
  cachedResponseJson: null;
}

/** The request stops: answer the client with `cachedResponse`; the upstream is not called. */
export interface CacheHitOutcome extends RingOutcomeBase {
  action: 'cache_hit';
  ended: true;
  block: null;
  cachedResponse: JsonObject;
  cachedResponseJson: Buffer;
}

/**
 * A ring's answer (ringd.v1.ExecuteRingResponse), a union discriminated by `action`
 * (or `ended`): after `if (outcome.action === 'block')` TypeScript knows `outcome.block`
 * is set, after `=== 'cache_hit'` that `outcome.cachedResponse` is.
 */
export type RingOutcome = ContinueOutcome | BlockOutcome | CacheHitOutcome;

export interface PluginStats {
  invocations: number;
  errors: number;
  blocks: number;
  timeouts: number;
  bypasses: number;
  stalls: number;
  totalLatencyMs: number;
  avgLatencyMs: number;
  p50LatencyMs: number;
  p95LatencyMs: number;
  p99LatencyMs: number;
}

export interface PluginInfo {
  name: string;
  ring: RingName;
  version: string;
  author: string;
  description: string;
  entrypoint: string;
  priority: number;
  enabled: boolean;
  status: 'active' | 'disabled' | 'failed' | 'circuit_open';
  loadError: string;
  timeoutMs: number;
  failPolicy: 'open' | 'closed';
  stats: PluginStats;
}

export interface ListPluginsResult {
  plugins: PluginInfo[];
  configVersion: string;
  generation: number;
}

export interface ReloadResult {
  configVersion: string;
  generation: number;
}

export type HealthStatus = 'UNKNOWN' | 'SERVING' | 'NOT_SERVING' | 'SERVICE_UNKNOWN';

export interface RingdClientOptions {
  /** Directory holding ringd/v1/*.proto (default: DEFAULT_PROTO_ROOT, the copy inside this package). */
  protoRoot?: string;
  /** Default: insecure (plaintext), for loopback or a unix socket. */
  credentials?: ChannelCredentials;
  /** Sent as `authorization: Bearer <token>` on admin calls. */
  adminToken?: string;
  /** Default deadline of every call, in milliseconds (default 10000). */
  deadlineMs?: number;
  channelOptions?: ChannelOptions;
}

/** A gRPC failure: compare `code` with `status` (UNAVAILABLE: ringd down). */
export type RingdCallError = ServiceError;

/** StreamRing's reply to a chunk (or to `end`): chunks to write to the client now, each as `data: <chunk>\n\n`. */
export interface StreamRelease {
  kind: 'release';
  /** chat.completion.chunk objects as UTF-8 JSON bytes; may be empty (text held back). */
  chunks: Buffer[];
}

interface StreamEndBase {
  /** How many chunks ringd released over the whole call. */
  releasedChunks: number;
  results: PluginResult[];
  metadata: JsonObject;
  configVersion: string;
  generation: number;
  /** True when ringd queued BACKGROUND on the assembled answer (do not call it yourself). */
  backgroundQueued: boolean;
}

/** The stream is blocked (the last reply): an HTTP error when releasedChunks is 0, else an SSE error event. */
export interface StreamBlockReply extends StreamEndBase {
  kind: 'block';
  block: BlockInfo;
  decidedBy: string;
}

/** The stream finished (the last reply): write `data: [DONE]`. */
export interface StreamDoneReply extends StreamEndBase {
  kind: 'done';
  /** The assembled chat.completion as the client received it. */
  answer: JsonObject;
  answerJson: Buffer;
}

export type StreamReply = StreamRelease | StreamBlockReply | StreamDoneReply;

/** One streamed answer through POST_FLIGHT (RingdClient.streamRing). */
export declare class RingStream implements AsyncIterable<StreamReply> {
  /** One upstream chunk: its JSON (string, bytes or object) or the raw SSE event (`data: {...}`). */
  send(chunk: string | Uint8Array | JsonObject): void;
  /** The upstream is over: ringd answers a release (the held tail), then done or block. */
  end(): void;
  /** The next reply (exactly one per chunk, in order), or undefined after the last; rejects with a RingdCallError. */
  recv(): Promise<StreamReply | undefined>;
  /** Cancels the call; ringd drops what it held. */
  cancel(): void;
  [Symbol.asyncIterator](): AsyncIterator<StreamReply>;
}

export declare class RingdClient {
  /** @param target host:port or unix:/path (default 127.0.0.1:50051). */
  constructor(target?: string, options?: RingdClientOptions);
  readonly target: string;
  deadlineMs: number;
  executeRing(ring: RingLike, context?: RingContext, options?: CallOptions): Promise<RingOutcome>;
  /** Runs the rings in order in one call; stops at the first block or cache hit (the last outcome has the verdict). */
  executeRings(rings: RingLike[], context?: RingContext, options?: CallOptions): Promise<RingOutcome[]>;
  /**
   * POST_FLIGHT on a streamed answer: sends `open` with the context (body, ROUTING's
   * metadata, request, requestId; no response). No default deadline.
   */
  streamRing(context?: RingContext, options?: CallOptions): RingStream;
  listPlugins(ring?: RingLike, options?: CallOptions): Promise<ListPluginsResult>;
  reloadConfig(options?: CallOptions): Promise<ReloadResult>;
  setPluginEnabled(name: string, enabled: boolean, options?: CallOptions): Promise<PluginInfo>;
  health(service?: string, options?: CallOptions): Promise<HealthStatus>;
  waitForReady(deadlineMs?: number): Promise<void>;
  close(): void;
}

/** The next ring's context: `context` with the outcome's final body, metadata and response. */
export declare function carry(outcome: RingOutcome, context?: RingContext): RingContext;
/** The ringd.v1.PluginContext message (proto-loader form) for a RingContext. */
export declare function buildContext(context?: RingContext): object;
/** A RingOutcome from a decoded ringd.v1.ExecuteRingResponse (proto-loader form). */
export declare function parseOutcome(message: object): RingOutcome;
/** A StreamReply from a decoded ringd.v1.StreamRingResponse (proto-loader form). */
export declare function parseStreamReply(message: object): StreamReply;
export declare function toValue(value: JsonValue): object;
export declare function fromValue(value: object): JsonValue;
