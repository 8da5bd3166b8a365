// Package fakeupstream is a fake OpenAI-compatible upstream for the example gateway
// and its tests: POST /v1/chat/completions answers a chat completion that echoes
// the request's model and last message ("echo: <content>") and records the request
// body; GET /_calls answers {"count": N, "requests": [...]}.
//
// With "stream": true it answers server-sent events instead: a role chunk, the
// content cut into chunks, a finish chunk, a usage-only chunk when
// "stream_options": {"include_usage": true}, then `data: [DONE]`. The request's
// "metadata" object steers it (OpenAI's own field; ringd's cache ignores it):
//
//	fake_cuts       "5,12,40"  cut the content at these character offsets
//	fake_chunk_chars 8         else cut every N characters (default 8)
//	fake_append     "text"     appended to the echoed content (e.g. a secret)
//	fake_delay_ms   50         pause before each content chunk
package fakeupstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Server is a running fake upstream.
type Server struct {
	// URL is the base URL, e.g. http://127.0.0.1:41234.
	URL string

	server   *http.Server
	mu       sync.Mutex
	requests []map[string]any
}

// Start listens on addr ("127.0.0.1:0" for an ephemeral port) and serves in the
// background until Close.
func Start(addr string) (*Server, error) {
	listener, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("fake upstream: %w", err)
	}
	s := &Server{URL: "http://" + listener.Addr().String()}
	s.server = &http.Server{Handler: s, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := s.server.Serve(listener); err != nil && !errors.Is(err, http.ErrServerClosed) {
			panic(fmt.Sprintf("fake upstream: %v", err)) // a test fixture: fail loudly
		}
	}()
	return s, nil
}

// Close stops the server.
func (s *Server) Close() error { return s.server.Close() }

// Count is how many chat requests reached the upstream.
func (s *Server) Count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.requests)
}

// Requests are the chat request bodies received, in order.
func (s *Server) Requests() []map[string]any {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]map[string]any(nil), s.requests...)
}

// Reset forgets the requests received so far.
func (s *Server) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.requests = nil
}

// ServeHTTP answers the fake upstream's two routes.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodGet && r.URL.Path == "/_calls":
		s.mu.Lock()
		answer := map[string]any{"count": len(s.requests), "requests": s.requests}
		writeJSON(w, http.StatusOK, answer)
		s.mu.Unlock()
	case r.Method == http.MethodPost && r.URL.Path == "/v1/chat/completions":
		var body map[string]any
		if err := json.NewDecoder(r.Body).Decode(&body); err != nil {
			writeJSON(w, http.StatusBadRequest, errorBody("invalid_request_error", err.Error()))
			return
		}
		s.mu.Lock()
		s.requests = append(s.requests, body)
		number := len(s.requests)
		s.mu.Unlock()
		if stream, _ := body["stream"].(bool); stream {
			s.stream(w, r, body, number)
			return
		}
		writeJSON(w, http.StatusOK, Completion(body, number))
	default:
		writeJSON(w, http.StatusNotFound, errorBody("not_found", "no route "+r.Method+" "+r.URL.Path))
	}
}

// Completion is the chat completion the fake upstream answers body with.
func Completion(body map[string]any, number int) map[string]any {
	messages, _ := body["messages"].([]any)
	content := "echo: "
	if len(messages) > 0 {
		if last, ok := messages[len(messages)-1].(map[string]any); ok {
			if text, ok := last["content"].(string); ok {
				content += text
			}
		}
	}
	content += steer(body).appendText
	model, _ := body["model"].(string)
	completionTokens := len(strings.Fields(content))
	return map[string]any{
		"id":      fmt.Sprintf("chatcmpl-fake-%d", number),
		"object":  "chat.completion",
		"created": time.Now().Unix(),
		"model":   model,
		"choices": []any{map[string]any{
			"index":         0,
			"message":       map[string]any{"role": "assistant", "content": content},
			"finish_reason": "stop",
		}},
		"usage": map[string]any{
			"prompt_tokens":     len(messages),
			"completion_tokens": completionTokens,
			"total_tokens":      len(messages) + completionTokens,
		},
	}
}

// steering is what the request's "metadata" asks of the fake upstream.
type steering struct {
	cuts       []int
	chunkChars int
	appendText string
	delay      time.Duration
}

func steer(body map[string]any) steering {
	out := steering{chunkChars: 8}
	meta, _ := body["metadata"].(map[string]any)
	if cuts, ok := meta["fake_cuts"].(string); ok {
		for _, field := range strings.Split(cuts, ",") {
			if n, err := strconv.Atoi(strings.TrimSpace(field)); err == nil && n > 0 {
				out.cuts = append(out.cuts, n)
			}
		}
	}
	if n, ok := number(meta["fake_chunk_chars"]); ok && n > 0 {
		out.chunkChars = n
	}
	out.appendText, _ = meta["fake_append"].(string)
	if n, ok := number(meta["fake_delay_ms"]); ok && n > 0 {
		out.delay = time.Duration(n) * time.Millisecond
	}
	return out
}

// number reads a JSON number or a numeric string.
func number(value any) (int, bool) {
	switch v := value.(type) {
	case float64:
		return int(v), true
	case string:
		n, err := strconv.Atoi(v)
		return n, err == nil
	}
	return 0, false
}

// Pieces cuts text (by characters) at the cut offsets, else every chunkChars characters.
func Pieces(text string, cuts []int, chunkChars int) []string {
	runes := []rune(text)
	if len(cuts) == 0 {
		for at := chunkChars; at < len(runes); at += chunkChars {
			cuts = append(cuts, at)
		}
	}
	var pieces []string
	start := 0
	for _, cut := range cuts {
		if cut > start && cut < len(runes) {
			pieces = append(pieces, string(runes[start:cut]))
			start = cut
		}
	}
	return append(pieces, string(runes[start:]))
}

// stream answers body as server-sent events, one chat.completion.chunk each.
func (s *Server) stream(w http.ResponseWriter, r *http.Request, body map[string]any, number int) {
	answer := Completion(body, number)
	choice := answer["choices"].([]any)[0].(map[string]any)
	content := choice["message"].(map[string]any)["content"].(string)
	how := steer(body)
	flusher, _ := w.(http.Flusher)
	w.Header().Set("Content-Type", "text/event-stream")
	w.Header().Set("Cache-Control", "no-cache")
	w.WriteHeader(http.StatusOK)
	event := func(delta map[string]any, finish any, usage any) bool {
		chunk := map[string]any{
			"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"], "model": answer["model"],
			"choices": []any{},
		}
		if delta != nil {
			chunk["choices"] = []any{map[string]any{"index": 0, "delta": delta, "finish_reason": finish}}
		}
		if usage != nil {
			chunk["usage"] = usage
		}
		data, _ := json.Marshal(chunk)
		if _, err := fmt.Fprintf(w, "data: %s\n\n", data); err != nil {
			return false // the client went away
		}
		if flusher != nil {
			flusher.Flush()
		}
		return true
	}
	if !event(map[string]any{"role": "assistant", "content": ""}, nil, nil) {
		return
	}
	for _, piece := range Pieces(content, how.cuts, how.chunkChars) {
		if how.delay > 0 {
			select {
			case <-r.Context().Done():
				return
			case <-time.After(how.delay):
			}
		}
		if !event(map[string]any{"content": piece}, nil, nil) {
			return
		}
	}
	if !event(map[string]any{}, "stop", nil) {
		return
	}
	if options, _ := body["stream_options"].(map[string]any); options["include_usage"] == true {
		if !event(nil, nil, answer["usage"]) {
			return
		}
	}
	_, _ = io.WriteString(w, "data: [DONE]\n\n")
	if flusher != nil {
		flusher.Flush()
	}
}

func errorBody(kind, message string) map[string]any {
	return map[string]any{"error": map[string]any{"type": kind, "message": message}}
}

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value) // the client went away: nothing left to tell
}
