// Command gateway is an example LLM gateway on net/http, with its plugin rings in ringd.
//
// POST /v1/chat/completions (an OpenAI-style chat request):
//
//  1. INGRESS, PRE_FLIGHT and ROUTING in one ExecuteRings call (it stops at the
//     first BLOCK or CACHE_HIT and carries body and metadata from ring to ring
//     itself). BLOCK -> its HTTP status and headers (Retry-After, ...) with
//     {"error": {"type", "message"}};
//     CACHE_HIT -> the cached answer, upstream not called (header X-Ringd-Cache: hit).
//  2. The final body from ringd (a MODIFY included) goes to the upstream.
//  3. POST_FLIGHT with the upstream answer as response_json and the metadata
//     carried from ROUTING's answer; its final response is what the client gets.
//  4. BACKGROUND, fire and forget, after the client has its answer.
//
// With "stream": true the answer is server-sent events (stream.go): the upstream's
// events go through ringd's StreamRing (POST_FLIGHT chunk by chunk, BACKGROUND queued
// by ringd); each released chunk is written and flushed as `data: <chunk>`, then
// `data: [DONE]`. A block before anything was released is a plain HTTP error, after
// that an SSE error event and a clean close. A CACHE_HIT is replayed as SSE. ringd
// failing mid-stream: fail-open relays the rest of the upstream's events unprocessed
// (header X-Ringd-Bypassed when nothing was written yet); fail-closed ends the
// stream with an error event of type ringd_unavailable.
//
// ringd unreachable (or any gRPC error but INVALID_ARGUMENT): 503
// {"error": {"type": "ringd_unavailable"}}; with fail-open the rings are skipped, the
// client's body goes upstream unchanged and the answer carries the header
// X-Ringd-Bypassed naming the skipped rings.
//
// Settings (flag, else env, else default):
//
//	-ringd     RINGD_TARGET        ringd address (host:port or unix:/path)  127.0.0.1:50051
//	-upstream  UPSTREAM_URL        upstream base URL; empty starts the fake upstream
//	-port      PORT                listen port, 0 for an ephemeral one      8080
//	-host      HOST                listen address                           127.0.0.1
//	-fail-open RINGD_FAIL_OPEN=1   pass through to upstream when ringd is down
//	           RINGD_DEADLINE_MS   deadline of each ringd call (ms)         2000
//
// go run ./examples/gateway -port 0 prints "gateway listening on http://127.0.0.1:PORT".
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringd/ringd/clients/go/examples/fakeupstream"
	"github.com/ringd/ringd/clients/go/ringd"
	"github.com/ringd/ringd/clients/go/ringdv1"
)

const maxBodyBytes = 4 << 20

var preUpstreamRings = []ringdv1.PluginHook{ringd.Ingress, ringd.PreFlight, ringd.Routing}

// Gateway is the example gateway's http.Handler.
type Gateway struct {
	Client      *ringd.Client
	UpstreamURL string        // base URL; the gateway posts to <UpstreamURL>/v1/chat/completions
	FailOpen    bool          // ringd down: pass through to upstream instead of 503
	Deadline    time.Duration // of each ringd call
	HTTPClient  *http.Client  // for the upstream; nil means http.DefaultClient
	Log         *log.Logger   // nil means the standard logger
}

// httpError is an error answered to the client as {"error": {"type", "message"}}.
type httpError struct {
	status  int
	kind    string
	message string
}

func (e *httpError) Error() string { return e.kind + ": " + e.message }

func (g *Gateway) logf(format string, args ...any) {
	if g.Log != nil {
		g.Log.Printf(format, args...)
		return
	}
	log.Printf(format, args...)
}

func writeJSON(w http.ResponseWriter, statusCode int, body []byte) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(statusCode)
	_, _ = w.Write(body) // the client went away: nothing left to tell
}

func writeError(w http.ResponseWriter, statusCode int, kind, message string) {
	body, _ := json.Marshal(map[string]any{"error": map[string]string{"type": kind, "message": message}})
	writeJSON(w, statusCode, body)
}

// ServeHTTP handles one client request.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if err := g.serve(w, r); err != nil {
		var answer *httpError
		if errors.As(err, &answer) {
			writeError(w, answer.status, answer.kind, answer.message)
			return
		}
		g.logf("gateway: %v", err)
		writeError(w, http.StatusInternalServerError, "internal_error", "internal gateway error")
	}
}

// ringdFailed turns a failed ringd call into the client's answer, or (fail-open)
// into the list of rings skipped.
func (g *Gateway) ringdFailed(err error, rings ...ringdv1.PluginHook) ([]string, error) {
	st, ok := status.FromError(err)
	if !ok {
		return nil, err // not a gRPC error: a bug, answered 500
	}
	if st.Code() == codes.InvalidArgument {
		return nil, &httpError{http.StatusBadRequest, "invalid_request_error", st.Message()}
	}
	names := make([]string, len(rings))
	for i, ring := range rings {
		names[i] = strings.ToLower(strings.TrimPrefix(ring.String(), "PLUGIN_HOOK_"))
	}
	g.logf("ringd %s: %s: %s", strings.Join(names, ","), st.Code(), st.Message())
	if !g.FailOpen {
		return nil, &httpError{http.StatusServiceUnavailable, "ringd_unavailable",
			fmt.Sprintf("plugin service unavailable (%s)", st.Code())}
	}
	return names, nil
}

func (g *Gateway) serve(w http.ResponseWriter, r *http.Request) error {
	if r.URL.Path != "/v1/chat/completions" {
		return &httpError{http.StatusNotFound, "not_found", "no route " + r.URL.Path}
	}
	if r.Method != http.MethodPost {
		return &httpError{http.StatusMethodNotAllowed, "method_not_allowed", "use POST"}
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, maxBodyBytes))
	if err != nil {
		return &httpError{http.StatusRequestEntityTooLarge, "request_too_large", err.Error()}
	}
	var probe map[string]any
	if err := json.Unmarshal(raw, &probe); err != nil || probe == nil {
		return &httpError{http.StatusBadRequest, "invalid_request_error", "the body must be a JSON object"}
	}
	streaming, _ := probe["stream"].(bool)

	requestID := r.Header.Get("X-Request-Id")
	if requestID == "" {
		requestID = newRequestID()
	}
	w.Header().Set("X-Request-Id", requestID)
	traceparent := r.Header.Get("Traceparent")
	ctx := ringd.WithTraceparent(r.Context(), traceparent, r.Header.Get("Tracestate"))
	pctx := ringd.NewContext(raw, ringd.HTTPRequestInfo(r))
	pctx.RequestId = requestID
	pctx.SessionId = r.Header.Get("X-Session-Id")
	var bypassed []string

	// 1. INGRESS, PRE_FLIGHT, ROUTING: one call, stops at the first BLOCK or CACHE_HIT.
	callCtx, cancel := context.WithTimeout(ctx, g.Deadline)
	outcomes, err := g.Client.ExecuteRings(callCtx, preUpstreamRings, pctx)
	cancel()
	if err != nil {
		skipped, err := g.ringdFailed(err, preUpstreamRings...)
		if err != nil {
			return err
		}
		bypassed = append(bypassed, skipped...)
	} else {
		last := outcomes[len(outcomes)-1]
		switch {
		case last.Blocked():
			last.SetBlockHeaders(w.Header()) // e.g. Retry-After on a 429
			block := last.GetBlock()
			return &httpError{int(block.GetStatusCode()), block.GetErrorType(), block.GetMessage()}
		case last.CacheHit():
			cached, err := last.CachedResponseJSON()
			if err != nil {
				return err
			}
			w.Header().Set("X-Ringd-Cache", "hit")
			if streaming {
				replaySSE(w, cached)
				g.background(ctx, ringd.WithResponse(ringd.Carry(pctx, last), cached))
				return nil
			}
			writeJSON(w, http.StatusOK, cached)
			g.background(ctx, ringd.WithResponse(ringd.Carry(pctx, last), cached))
			return nil
		}
		pctx = ringd.Carry(pctx, last) // final body (MODIFY included) and metadata
	}

	if streaming {
		return g.serveStream(ctx, w, r, pctx, bypassed, requestID, traceparent)
	}

	// 2. The upstream gets ringd's final body.
	upstreamStatus, upstreamBody, err := g.postUpstream(r.Context(), pctx.GetBodyJson(), requestID, traceparent)
	if err != nil {
		return &httpError{http.StatusBadGateway, "upstream_unavailable", "upstream: " + err.Error()}
	}
	var answerProbe map[string]any
	if upstreamStatus < 200 || upstreamStatus >= 300 || json.Unmarshal(upstreamBody, &answerProbe) != nil || answerProbe == nil {
		// An upstream error is the client's answer as it is; there is nothing to post-process.
		writeJSON(w, upstreamStatus, upstreamBody)
		return nil
	}

	// 3. POST_FLIGHT with the upstream answer; metadata carried from ROUTING.
	answer := upstreamBody
	pctx = ringd.WithResponse(pctx, upstreamBody)
	callCtx, cancel = context.WithTimeout(ctx, g.Deadline)
	post, err := g.Client.ExecuteRing(callCtx, ringd.PostFlight, pctx)
	cancel()
	if err != nil {
		skipped, err := g.ringdFailed(err, ringd.PostFlight)
		if err != nil {
			return err
		}
		bypassed = append(bypassed, skipped...)
	} else {
		switch {
		case post.Blocked():
			post.SetBlockHeaders(w.Header())
			block := post.GetBlock()
			return &httpError{int(block.GetStatusCode()), block.GetErrorType(), block.GetMessage()}
		case post.CacheHit():
			answer, err = post.CachedResponseJSON()
		default:
			var final []byte
			if final, err = post.ResponseJSON(); final != nil {
				answer = final
			}
		}
		if err != nil {
			return err
		}
		pctx = ringd.WithResponse(ringd.Carry(pctx, post), answer)
	}
	if len(bypassed) > 0 {
		w.Header().Set("X-Ringd-Bypassed", strings.Join(bypassed, ","))
	}
	writeJSON(w, http.StatusOK, answer)

	// 4. BACKGROUND: after the answer, not awaited.
	if len(bypassed) == 0 {
		g.background(ctx, pctx)
	}
	return nil
}

// background sends the BACKGROUND ring without waiting; ringd only queues it.
func (g *Gateway) background(ctx context.Context, pctx *ringdv1.PluginContext) {
	ctx = context.WithoutCancel(ctx) // outlives the client's request
	go func() {
		ctx, cancel := context.WithTimeout(ctx, g.Deadline)
		defer cancel()
		if _, err := g.Client.ExecuteRing(ctx, ringd.Background, pctx); err != nil {
			g.logf("ringd background: %v", err)
		}
	}()
}

func (g *Gateway) openUpstream(ctx context.Context, body []byte, requestID, traceparent string) (*http.Response, error) {
	url := strings.TrimRight(g.UpstreamURL, "/") + "/v1/chat/completions"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", requestID)
	if traceparent != "" {
		req.Header.Set("Traceparent", traceparent)
	}
	client := g.HTTPClient
	if client == nil {
		client = http.DefaultClient
	}
	return client.Do(req)
}

func (g *Gateway) postUpstream(ctx context.Context, body []byte, requestID, traceparent string) (int, []byte, error) {
	resp, err := g.openUpstream(ctx, body, requestID, traceparent)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	answer, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, err
	}
	return resp.StatusCode, answer, nil
}

func newRequestID() string {
	var id [16]byte
	_, _ = rand.Read(id[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(id[:])
}

// config is the gateway's settings: flags, else environment, else defaults.
type config struct {
	ringdTarget string
	upstreamURL string
	host        string
	port        int
	failOpen    bool
	deadline    time.Duration
}

func parseConfig(args []string, getenv func(string) string) (config, error) {
	envOr := func(name, fallback string) string {
		if value := getenv(name); value != "" {
			return value
		}
		return fallback
	}
	truthy := map[string]bool{"1": true, "true": true, "yes": true, "on": true}
	deadlineMs, err := strconv.Atoi(envOr("RINGD_DEADLINE_MS", "2000"))
	if err != nil {
		return config{}, fmt.Errorf("RINGD_DEADLINE_MS: %w", err)
	}
	port, err := strconv.Atoi(envOr("PORT", "8080"))
	if err != nil {
		return config{}, fmt.Errorf("PORT: %w", err)
	}
	cfg := config{deadline: time.Duration(deadlineMs) * time.Millisecond}
	flags := flag.NewFlagSet("gateway", flag.ContinueOnError)
	flags.StringVar(&cfg.ringdTarget, "ringd", envOr("RINGD_TARGET", "127.0.0.1:50051"), "ringd address (host:port or unix:/path)")
	flags.StringVar(&cfg.upstreamURL, "upstream", getenv("UPSTREAM_URL"), "upstream base URL; empty starts the fake upstream")
	flags.StringVar(&cfg.host, "host", envOr("HOST", "127.0.0.1"), "listen address")
	flags.IntVar(&cfg.port, "port", port, "listen port, 0 for an ephemeral one")
	flags.BoolVar(&cfg.failOpen, "fail-open", truthy[strings.ToLower(getenv("RINGD_FAIL_OPEN"))], "pass through to upstream when ringd is down")
	if err := flags.Parse(args); err != nil {
		return config{}, err
	}
	return cfg, nil
}

// run serves until ctx ends, printing where it listens on stdout.
func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	cfg, err := parseConfig(args, getenv)
	if err != nil {
		return err
	}
	if cfg.upstreamURL == "" {
		upstream, err := fakeupstream.Start("127.0.0.1:0")
		if err != nil {
			return err
		}
		defer upstream.Close()
		cfg.upstreamURL = upstream.URL
		fmt.Fprintf(stdout, "fake upstream listening on %s\n", upstream.URL)
	}
	client, err := ringd.New(cfg.ringdTarget)
	if err != nil {
		return err
	}
	defer client.Close()

	listener, err := net.Listen("tcp", net.JoinHostPort(cfg.host, strconv.Itoa(cfg.port)))
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           &Gateway{Client: client, UpstreamURL: cfg.upstreamURL, FailOpen: cfg.failOpen, Deadline: cfg.deadline},
		ReadHeaderTimeout: 10 * time.Second,
	}
	mode := "closed"
	if cfg.failOpen {
		mode = "open"
	}
	fmt.Fprintf(stdout, "gateway listening on http://%s\n", listener.Addr())
	fmt.Fprintf(stdout, "ringd %s, upstream %s, fail-%s\n", cfg.ringdTarget, cfg.upstreamURL, mode)

	served := make(chan error, 1)
	go func() { served <- server.Serve(listener) }()
	select {
	case err := <-served:
		return err
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return server.Shutdown(shutdownCtx)
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		log.Fatalf("gateway: %v", err)
	}
}
