package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringd/ringd/clients/go/ringdv1"
)

// sseWriter writes server-sent events to the client, flushing each; the status and
// headers go out with the first event, so a block before it can still be an HTTP error.
type sseWriter struct {
	w       http.ResponseWriter
	started bool
}

func (s *sseWriter) start() {
	if s.started {
		return
	}
	s.started = true
	h := s.w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	s.w.WriteHeader(http.StatusOK)
}

// event writes one raw event (its lines, without the blank line that ends it).
func (s *sseWriter) event(lines []byte) error {
	s.start()
	if _, err := s.w.Write(append(append([]byte(nil), lines...), '\n', '\n')); err != nil {
		return err
	}
	return http.NewResponseController(s.w).Flush()
}

func (s *sseWriter) data(payload []byte) error {
	return s.event(append([]byte("data: "), payload...))
}

// errorEvent ends the stream with OpenAI's error shape: data: {"error": {...}}.
func (s *sseWriter) errorEvent(statusCode int, kind, message string) error {
	payload, _ := json.Marshal(map[string]any{"error": map[string]any{"message": message, "type": kind, "code": statusCode}})
	return s.data(payload)
}

// sseEvents reads server-sent events from r: each event's lines, without the blank
// line that ends it (the last event needs none).
func sseEvents(r io.Reader, each func(event []byte) error) error {
	reader := bufio.NewReader(r)
	var event []byte
	for {
		line, err := reader.ReadBytes('\n')
		trimmed := bytes.TrimRight(line, "\r\n")
		if len(trimmed) == 0 && len(event) > 0 && (len(line) > 0 || err != nil) {
			if cbErr := each(event); cbErr != nil {
				return cbErr
			}
			event = nil
		} else if len(trimmed) > 0 {
			if len(event) > 0 {
				event = append(event, '\n')
			}
			event = append(event, trimmed...)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				if len(event) > 0 {
					return each(event)
				}
				return nil
			}
			return err
		}
	}
}

func isDone(event []byte) bool {
	return bytes.Equal(bytes.TrimSpace(bytes.TrimPrefix(event, []byte("data:"))), []byte("[DONE]"))
}

// replaySSE answers a cached chat.completion as a stream: per choice a role and
// content chunk, then its finish chunk, a usage chunk when the answer has usage, [DONE].
func replaySSE(w http.ResponseWriter, cached []byte) {
	out := &sseWriter{w: w}
	var answer map[string]any
	if err := json.Unmarshal(cached, &answer); err != nil {
		_ = out.errorEvent(http.StatusBadGateway, "invalid_cached_response", err.Error())
		return
	}
	chunk := func(choices []any) map[string]any {
		return map[string]any{"id": answer["id"], "object": "chat.completion.chunk", "created": answer["created"],
			"model": answer["model"], "choices": choices}
	}
	var events []map[string]any
	choices, _ := answer["choices"].([]any)
	for _, item := range choices {
		choice, _ := item.(map[string]any)
		message, _ := choice["message"].(map[string]any)
		delta := map[string]any{"role": "assistant", "content": message["content"]}
		if calls, ok := message["tool_calls"].([]any); ok {
			for i, call := range calls {
				if call, ok := call.(map[string]any); ok {
					call["index"] = i
				}
			}
			delta["tool_calls"] = calls
		}
		events = append(events,
			chunk([]any{map[string]any{"index": choice["index"], "delta": delta, "finish_reason": nil}}),
			chunk([]any{map[string]any{"index": choice["index"], "delta": map[string]any{}, "finish_reason": choice["finish_reason"]}}))
	}
	if usage, ok := answer["usage"]; ok && usage != nil {
		last := chunk([]any{})
		last["usage"] = usage
		events = append(events, last)
	}
	for _, event := range events {
		payload, _ := json.Marshal(event)
		if out.data(payload) != nil {
			return // the client went away
		}
	}
	_ = out.event([]byte("data: [DONE]"))
}

// serveStream answers a "stream": true request: the upstream's events through
// StreamRing, one chunk and one reply at a time.
func (g *Gateway) serveStream(ctx context.Context, w http.ResponseWriter, r *http.Request, pctx *ringdv1.PluginContext,
	bypassed []string, requestID, traceparent string) error {
	resp, err := g.openUpstream(r.Context(), pctx.GetBodyJson(), requestID, traceparent)
	if err != nil {
		return &httpError{http.StatusBadGateway, "upstream_unavailable", "upstream: " + err.Error()}
	}
	defer resp.Body.Close()
	if resp.StatusCode < 200 || resp.StatusCode >= 300 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
		// An upstream error (or an answer that is not a stream) is the client's answer as it is.
		answer, err := io.ReadAll(resp.Body)
		if err != nil {
			return &httpError{http.StatusBadGateway, "upstream_unavailable", "upstream: " + err.Error()}
		}
		w.Header().Set("Content-Type", resp.Header.Get("Content-Type"))
		w.WriteHeader(resp.StatusCode)
		_, _ = w.Write(answer)
		return nil
	}
	out := &sseWriter{w: w}
	if len(bypassed) > 0 {
		w.Header().Set("X-Ringd-Bypassed", strings.Join(bypassed, ","))
		return relay(resp.Body, out)
	}

	// POST_FLIGHT chunk by chunk; BACKGROUND is ringd's (queued on the assembled answer).
	pctx.Response = nil // open carries no response
	stream, err := g.Client.StreamRing(ctx, pctx)
	if err == nil {
		defer stream.Close()
	}
	// ringdDown handles a failed StreamRing: fail-open relays the rest unprocessed.
	ringdDown := func(err error) error {
		st, _ := status.FromError(err)
		g.logf("ringd stream_ring: %s: %s", st.Code(), st.Message())
		if g.FailOpen {
			if !out.started {
				w.Header().Set("X-Ringd-Bypassed", "post_flight")
			}
			return relay(resp.Body, out)
		}
		if !out.started && st.Code() == codes.InvalidArgument {
			return &httpError{http.StatusBadRequest, "invalid_request_error", st.Message()}
		}
		if !out.started {
			return &httpError{http.StatusServiceUnavailable, "ringd_unavailable", fmt.Sprintf("plugin service unavailable (%s)", st.Code())}
		}
		_ = out.errorEvent(http.StatusServiceUnavailable, "ringd_unavailable", fmt.Sprintf("plugin service unavailable (%s)", st.Code()))
		return nil
	}
	if err != nil {
		return ringdDown(err)
	}
	// handle writes one reply; finished is true after a block or done.
	handle := func(reply *ringdv1.StreamRingResponse) (finished bool, err error) {
		switch {
		case reply.GetBlock() != nil:
			blocked := reply.GetBlock()
			block := blocked.GetBlock()
			if blocked.GetReleasedChunks() == 0 && !out.started {
				for name, value := range block.GetHeaders() {
					w.Header().Set(name, value)
				}
				return true, &httpError{int(block.GetStatusCode()), block.GetErrorType(), block.GetMessage()}
			}
			return true, out.errorEvent(int(block.GetStatusCode()), block.GetErrorType(), block.GetMessage())
		case reply.GetDone() != nil:
			return true, out.event([]byte("data: [DONE]"))
		default:
			for _, chunk := range reply.GetRelease().GetChunks() {
				if err := out.data(chunk); err != nil {
					return true, nil // the client went away; Close cancels the call
				}
			}
			return false, nil
		}
	}
	var ringdErr error
	finished := false
	readErr := sseEvents(resp.Body, func(event []byte) error {
		if isDone(event) {
			return io.EOF // ours is written after `done`
		}
		if err := stream.Send(event); err != nil {
			ringdErr = err
			return err
		}
		reply, err := stream.Recv()
		if err != nil {
			ringdErr = err
			return err
		}
		finished, err = handle(reply)
		if finished {
			return errFinished{err}
		}
		return nil
	})
	var done errFinished
	switch {
	case errors.As(readErr, &done):
		return done.err
	case ringdErr != nil:
		return ringdDown(ringdErr)
	case readErr != nil && !errors.Is(readErr, io.EOF):
		// The upstream broke off: end the client's stream with an error (ringd is cancelled).
		if !out.started {
			return &httpError{http.StatusBadGateway, "upstream_unavailable", "upstream: " + readErr.Error()}
		}
		_ = out.errorEvent(http.StatusBadGateway, "upstream_unavailable", "upstream: "+readErr.Error())
		return nil
	}
	if err := stream.End(); err != nil {
		return ringdDown(err)
	}
	for !finished {
		reply, err := stream.Recv()
		if err != nil {
			return ringdDown(err)
		}
		if finished, err = handle(reply); err != nil {
			return err
		}
	}
	return nil
}

// errFinished stops reading the upstream: ringd ended the stream (block or done).
type errFinished struct{ err error }

func (e errFinished) Error() string { return "stream finished" }

// relay writes the upstream's remaining events to the client unprocessed (fail-open).
func relay(upstream io.Reader, out *sseWriter) error {
	err := sseEvents(upstream, func(event []byte) error { return out.event(event) })
	if err != nil && out.started {
		return nil // the client or the upstream went away mid-stream: nothing left to tell
	}
	return err
}
