// Package fakeupstream is a fake OpenAI-compatible upstream for the example gateway
// and its tests: POST /v1/chat/completions answers a chat completion that echoes
// the request's model and last message ("echo: <content>") and records the request
// body; GET /_calls answers {"count": N, "requests": [...]}.
package fakeupstream

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
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

func errorBody(kind, message string) map[string]any {
	return map[string]any{"error": map[string]any{"type": kind, "message": message}}
}

func writeJSON(w http.ResponseWriter, status int, value any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(value) // the client went away: nothing left to tell
}
