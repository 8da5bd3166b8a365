// Package ringd is a gateway's client for ringd, the gRPC service that runs an LLM
// gateway's plugin rings (contract ringd.v1, generated in package ringdv1).
//
// A gateway sends each ring the request's context and does what the outcome says:
// forward the (possibly changed) body upstream, answer the client with the block's
// HTTP status, or answer from cache. Bodies travel as raw JSON bytes (body_json),
// so the outcome's body comes back as JSON bytes too. Carry the outcome's metadata
// into the next ring's context (Carry does it); ringd keeps nothing between calls.
//
//	client, err := ringd.New("127.0.0.1:50051")
//	pctx := ringd.NewContext(body, ringd.HTTPRequestInfo(r))
//	out, err := client.ExecuteRing(ctx, ringd.PreFlight, pctx)
//	if out.Blocked() { ... out.GetBlock().GetStatusCode() ... }
//	pctx = ringd.Carry(pctx, out)
//
// Deadlines come from the context (context.WithTimeout); a call whose context has
// none gets the client's default timeout. WithTraceparent puts the caller's W3C
// trace context on the outgoing gRPC metadata.
package ringd

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/ringd/ringd/clients/go/ringdv1"
)

// The rings, in the order a gateway calls them.
const (
	Ingress    = ringdv1.PluginHook_PLUGIN_HOOK_INGRESS
	PreFlight  = ringdv1.PluginHook_PLUGIN_HOOK_PRE_FLIGHT
	Routing    = ringdv1.PluginHook_PLUGIN_HOOK_ROUTING
	PostFlight = ringdv1.PluginHook_PLUGIN_HOOK_POST_FLIGHT
	Background = ringdv1.PluginHook_PLUGIN_HOOK_BACKGROUND
)

// The verdicts of a ring.
const (
	Passthrough = ringdv1.PluginAction_PLUGIN_ACTION_PASSTHROUGH
	Modify      = ringdv1.PluginAction_PLUGIN_ACTION_MODIFY
	Block       = ringdv1.PluginAction_PLUGIN_ACTION_BLOCK
	CacheHit    = ringdv1.PluginAction_PLUGIN_ACTION_CACHE_HIT
)

// DefaultTimeout is the deadline of a call whose context has none, unless
// WithTimeout says otherwise.
const DefaultTimeout = 10 * time.Second

// Client calls one ringd server. It is safe for concurrent use.
type Client struct {
	conn       *grpc.ClientConn // nil when the caller owns the connection
	engine     ringdv1.PluginEngineServiceClient
	admin      ringdv1.PluginAdminServiceClient
	health     healthpb.HealthClient
	adminToken string
	timeout    time.Duration
}

type options struct {
	adminToken  string
	timeout     time.Duration
	dialOptions []grpc.DialOption
}

// Option configures a Client.
type Option func(*options)

// WithAdminToken sends `authorization: Bearer <token>` on admin calls.
func WithAdminToken(token string) Option { return func(o *options) { o.adminToken = token } }

// WithTimeout sets the deadline of calls whose context has none; 0 means none.
func WithTimeout(timeout time.Duration) Option { return func(o *options) { o.timeout = timeout } }

// WithDialOptions replaces the default dial options (plaintext, for loopback or a
// unix socket), for example with TLS transport credentials.
func WithDialOptions(dialOptions ...grpc.DialOption) Option {
	return func(o *options) { o.dialOptions = dialOptions }
}

func buildOptions(opts []Option) options {
	o := options{
		timeout:     DefaultTimeout,
		dialOptions: []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
	}
	for _, opt := range opts {
		opt(&o)
	}
	return o
}

// New creates a client of the ringd at target ("host:port" or "unix:/path"). It
// connects lazily: a ringd that is down shows up as codes.Unavailable on a call.
func New(target string, opts ...Option) (*Client, error) {
	o := buildOptions(opts)
	conn, err := grpc.NewClient(target, o.dialOptions...)
	if err != nil {
		return nil, fmt.Errorf("ringd: connect to %q: %w", target, err)
	}
	client := NewFromConn(conn, opts...)
	client.conn = conn
	return client, nil
}

// NewFromConn creates a client over a connection the caller owns (Close leaves it open).
func NewFromConn(cc grpc.ClientConnInterface, opts ...Option) *Client {
	o := buildOptions(opts)
	return &Client{
		engine:     ringdv1.NewPluginEngineServiceClient(cc),
		admin:      ringdv1.NewPluginAdminServiceClient(cc),
		health:     healthpb.NewHealthClient(cc),
		adminToken: o.adminToken,
		timeout:    o.timeout,
	}
}

// Close closes the connection New opened.
func (c *Client) Close() error {
	if c.conn == nil {
		return nil
	}
	return c.conn.Close()
}

func (c *Client) callContext(ctx context.Context, admin bool) (context.Context, context.CancelFunc) {
	if admin && c.adminToken != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+c.adminToken)
	}
	if _, ok := ctx.Deadline(); !ok && c.timeout > 0 {
		return context.WithTimeout(ctx, c.timeout)
	}
	return ctx, func() {}
}

// ExecuteRing runs one ring over pctx (nil means an empty context).
func (c *Client) ExecuteRing(ctx context.Context, ring ringdv1.PluginHook, pctx *ringdv1.PluginContext) (*Outcome, error) {
	ctx, cancel := c.callContext(ctx, false)
	defer cancel()
	reply, err := c.engine.ExecuteRing(ctx, &ringdv1.ExecuteRingRequest{Ring: ring, Context: pctx})
	if err != nil {
		return nil, err
	}
	return &Outcome{reply}, nil
}

// ExecuteRings runs several rings in order in one call and stops at the first
// BLOCK or CACHE_HIT: the last outcome carries the verdict.
func (c *Client) ExecuteRings(ctx context.Context, rings []ringdv1.PluginHook, pctx *ringdv1.PluginContext) ([]*Outcome, error) {
	ctx, cancel := c.callContext(ctx, false)
	defer cancel()
	reply, err := c.engine.ExecuteRings(ctx, &ringdv1.ExecuteRingsRequest{Rings: rings, Context: pctx})
	if err != nil {
		return nil, err
	}
	outcomes := make([]*Outcome, len(reply.GetOutcomes()))
	for i, outcome := range reply.GetOutcomes() {
		outcomes[i] = &Outcome{outcome}
	}
	return outcomes, nil
}

// ListPlugins lists the loaded plugins; PLUGIN_HOOK_UNSPECIFIED (0) lists every ring.
func (c *Client) ListPlugins(ctx context.Context, ring ringdv1.PluginHook) (*ringdv1.ListPluginsResponse, error) {
	ctx, cancel := c.callContext(ctx, true)
	defer cancel()
	return c.admin.ListPlugins(ctx, &ringdv1.ListPluginsRequest{Ring: ring})
}

// ReloadConfig makes ringd reread its configuration file, as SIGHUP does.
func (c *Client) ReloadConfig(ctx context.Context) (*ringdv1.ReloadConfigResponse, error) {
	ctx, cancel := c.callContext(ctx, true)
	defer cancel()
	return c.admin.ReloadConfig(ctx, &ringdv1.ReloadConfigRequest{})
}

// SetPluginEnabled enables or disables one plugin and returns it as it is after the change.
func (c *Client) SetPluginEnabled(ctx context.Context, name string, enabled bool) (*ringdv1.PluginInfo, error) {
	ctx, cancel := c.callContext(ctx, true)
	defer cancel()
	reply, err := c.admin.SetPluginEnabled(ctx, &ringdv1.SetPluginEnabledRequest{Name: name, Enabled: enabled})
	if err != nil {
		return nil, err
	}
	return reply.GetPlugin(), nil
}

// Health asks grpc.health.v1 for the server's status: SERVING, or NOT_SERVING while
// it drains.
func (c *Client) Health(ctx context.Context) (healthpb.HealthCheckResponse_ServingStatus, error) {
	ctx, cancel := c.callContext(ctx, false)
	defer cancel()
	reply, err := c.health.Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return healthpb.HealthCheckResponse_UNKNOWN, err
	}
	return reply.GetStatus(), nil
}

// WithTraceparent returns ctx with the W3C trace context on its outgoing gRPC
// metadata, so ringd's spans join the caller's trace. Empty values are left out.
func WithTraceparent(ctx context.Context, traceparent, tracestate string) context.Context {
	if traceparent != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", traceparent)
	}
	if tracestate != "" {
		ctx = metadata.AppendToOutgoingContext(ctx, "tracestate", tracestate)
	}
	return ctx
}

// NewContext is a ring's input with bodyJSON (the UTF-8 JSON of an object) as
// body_json, and the client's HTTP request when request is not nil.
func NewContext(bodyJSON []byte, request *ringdv1.RequestInfo) *ringdv1.PluginContext {
	pctx := &ringdv1.PluginContext{Request: request}
	if bodyJSON != nil {
		pctx.Body = &ringdv1.PluginContext_BodyJson{BodyJson: bodyJSON}
	}
	return pctx
}

// HTTPRequestInfo is the RequestInfo of an incoming HTTP request: method, path with
// query, lower-case header names with repeated values joined by ", ", client address.
func HTTPRequestInfo(r *http.Request) *ringdv1.RequestInfo {
	headers := make(map[string]string, len(r.Header)+1)
	for name, values := range r.Header {
		headers[strings.ToLower(name)] = strings.Join(values, ", ")
	}
	if r.Host != "" {
		headers["host"] = r.Host
	}
	return &ringdv1.RequestInfo{
		Method:        r.Method,
		Path:          r.URL.RequestURI(),
		Headers:       headers,
		ClientAddress: r.RemoteAddr,
	}
}

// Carry is the context for the ring after out: pctx with out's final body,
// metadata and (when out has one) upstream answer. Request, session and request id
// are kept. pctx itself is not changed.
func Carry(pctx *ringdv1.PluginContext, out *Outcome) *ringdv1.PluginContext {
	next := &ringdv1.PluginContext{
		Body:      pctx.GetBody(),
		Metadata:  out.GetMetadata(),
		SessionId: pctx.GetSessionId(),
		Response:  pctx.GetResponse(),
		Request:   pctx.GetRequest(),
		RequestId: pctx.GetRequestId(),
	}
	switch body := out.GetBody().(type) {
	case *ringdv1.ExecuteRingResponse_BodyJson:
		next.Body = &ringdv1.PluginContext_BodyJson{BodyJson: body.BodyJson}
	case *ringdv1.ExecuteRingResponse_BodyStruct:
		next.Body = &ringdv1.PluginContext_BodyStruct{BodyStruct: body.BodyStruct}
	}
	switch response := out.GetResponse().(type) {
	case *ringdv1.ExecuteRingResponse_ResponseJson:
		next.Response = &ringdv1.PluginContext_ResponseJson{ResponseJson: response.ResponseJson}
	case *ringdv1.ExecuteRingResponse_ResponseStruct:
		next.Response = &ringdv1.PluginContext_ResponseStruct{ResponseStruct: response.ResponseStruct}
	}
	return next
}

// WithResponse sets pctx's upstream answer (the UTF-8 JSON of an object) as
// response_json, for POST_FLIGHT and BACKGROUND, and returns pctx.
func WithResponse(pctx *ringdv1.PluginContext, responseJSON []byte) *ringdv1.PluginContext {
	pctx.Response = &ringdv1.PluginContext_ResponseJson{ResponseJson: responseJSON}
	return pctx
}

// Metadata converts plain Go values (as encoding/json produces them) to the
// metadata map of a PluginContext.
func Metadata(values map[string]any) (map[string]*structpb.Value, error) {
	out := make(map[string]*structpb.Value, len(values))
	for key, value := range values {
		converted, err := structpb.NewValue(value)
		if err != nil {
			return nil, fmt.Errorf("ringd: metadata %q: %w", key, err)
		}
		out[key] = converted
	}
	return out, nil
}

// Outcome is a ring's answer, with helpers for what a gateway asks of it.
type Outcome struct {
	*ringdv1.ExecuteRingResponse
}

// Ended reports whether the request stops here (BLOCK or CACHE_HIT).
func (o *Outcome) Ended() bool { return o.Blocked() || o.CacheHit() }

// Blocked reports whether the gateway must answer GetBlock()'s status and error.
func (o *Outcome) Blocked() bool { return o.GetAction() == Block }

// SetBlockHeaders sets the block's HTTP headers (for example Retry-After on a 429) on
// h, the gateway's answer to the client; it sets nothing unless the ring blocked.
func (o *Outcome) SetBlockHeaders(h http.Header) {
	if !o.Blocked() {
		return
	}
	for name, value := range o.GetBlock().GetHeaders() {
		h.Set(name, value)
	}
}

// CacheHit reports whether the gateway must answer CachedResponseJSON() and not call upstream.
func (o *Outcome) CacheHit() bool { return o.GetAction() == CacheHit }

// BodyJSON is the final request body to forward upstream, as JSON (nil when absent).
func (o *Outcome) BodyJSON() ([]byte, error) {
	return payload(o.GetBodyJson(), o.GetBodyStruct())
}

// ResponseJSON is the final upstream answer (POST_FLIGHT), as JSON (nil when absent).
func (o *Outcome) ResponseJSON() ([]byte, error) {
	return payload(o.GetResponseJson(), o.GetResponseStruct())
}

// CachedResponseJSON is the answer of a CACHE_HIT, as JSON (nil otherwise).
func (o *Outcome) CachedResponseJSON() ([]byte, error) {
	return payload(o.GetCachedResponseJson(), o.GetCachedResponseStruct())
}

// MetadataMap is the final metadata as plain Go values.
func (o *Outcome) MetadataMap() map[string]any {
	out := make(map[string]any, len(o.GetMetadata()))
	for key, value := range o.GetMetadata() {
		out[key] = value.AsInterface()
	}
	return out
}

func payload(raw []byte, structured *structpb.Struct) ([]byte, error) {
	if raw != nil {
		return raw, nil
	}
	if structured != nil {
		return structured.MarshalJSON()
	}
	return nil, nil
}
