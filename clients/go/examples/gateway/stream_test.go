package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"

	"github.com/ringd/ringd/clients/go/internal/ringdtest"
)

// sseReply is a streamed answer as the client saw it.
type sseReply struct {
	status int
	header http.Header
	events []string // each event's data, in order
	body   []byte   // the whole body (for a non-stream answer)
}

func (r sseReply) text(t *testing.T) string {
	t.Helper()
	var text strings.Builder
	for _, event := range r.events {
		if event == "[DONE]" {
			continue
		}
		var chunk struct {
			Choices []struct {
				Delta struct{ Content string } `json:"delta"`
			} `json:"choices"`
		}
		if err := json.Unmarshal([]byte(event), &chunk); err != nil {
			t.Fatalf("event %q: %v", event, err)
		}
		for _, choice := range chunk.Choices {
			text.WriteString(choice.Delta.Content)
		}
	}
	return text.String()
}

func postStream(t *testing.T, url string, body map[string]any) sseReply {
	t.Helper()
	body["stream"] = true
	data, _ := json.Marshal(body)
	resp, err := http.Post(url, "application/json", bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := sseReply{status: resp.StatusCode, header: resp.Header}
	var all bytes.Buffer
	scanner := bufio.NewScanner(resp.Body)
	for scanner.Scan() {
		all.Write(scanner.Bytes())
		all.WriteByte('\n')
		if line, ok := strings.CutPrefix(scanner.Text(), "data: "); ok {
			out.events = append(out.events, line)
		}
	}
	if err := scanner.Err(); err != nil {
		t.Fatal(err)
	}
	out.body = all.Bytes()
	return out
}

func steered(content string, steering map[string]any) map[string]any {
	return chat(content, map[string]any{"metadata": steering})
}

func TestStreamThroughStreamRing(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	got := postStream(t, url, steered("well darn, that is a long way round", map[string]any{"fake_chunk_chars": "3"}))
	if got.status != http.StatusOK || !strings.HasPrefix(got.header.Get("Content-Type"), "text/event-stream") {
		t.Fatalf("status %d content type %q: %s", got.status, got.header.Get("Content-Type"), got.body)
	}
	if text := got.text(t); text != "echo: well d**n, that is a long way round" {
		t.Fatalf("text %q", text)
	}
	if len(got.events) < 3 || got.events[len(got.events)-1] != "[DONE]" {
		t.Fatalf("events %q, want several and [DONE] last", got.events)
	}
}

func TestStreamBlockMidStreamIsAnErrorEvent(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	prompt := strings.Repeat("a calm and quiet opening, ", 4) + "then a forbidden word"
	got := postStream(t, url, steered(prompt, map[string]any{"fake_chunk_chars": "10"}))
	if got.status != http.StatusOK || len(got.events) < 2 {
		t.Fatalf("status %d events %q", got.status, got.events)
	}
	last := got.events[len(got.events)-1]
	var event struct {
		Error struct {
			Type string `json:"type"`
			Code int    `json:"code"`
		} `json:"error"`
	}
	if err := json.Unmarshal([]byte(last), &event); err != nil || event.Error.Type != "test_censored" || event.Error.Code != 451 {
		t.Fatalf("last event %q, want the block's error event", last)
	}
	if text := (sseReply{events: got.events[:len(got.events)-1]}).text(t); !strings.HasPrefix(text, "echo: a calm") || strings.Contains(text, "forbid") {
		t.Fatalf("released text %q", text)
	}
}

func TestStreamCacheHitIsReplayedAsSSE(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	got := postStream(t, url, chat("cached?", nil))
	if got.status != http.StatusOK || got.header.Get("X-Ringd-Cache") != "hit" {
		t.Fatalf("status %d cache %q: %s", got.status, got.header.Get("X-Ringd-Cache"), got.body)
	}
	if text := got.text(t); text != "from cache" || got.events[len(got.events)-1] != "[DONE]" {
		t.Fatalf("text %q events %q", text, got.events)
	}
	if n := upstream.Count(); n != 0 {
		t.Fatalf("upstream called %d times", n)
	}
}

func TestStreamRingdDownFailOpenRelaysTheUpstream(t *testing.T) {
	addr, err := ringdtest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	got := postStream(t, gateway(t, addr, true), steered("darn it", nil))
	if got.status != http.StatusOK || got.header.Get("X-Ringd-Bypassed") == "" {
		t.Fatalf("status %d bypassed %q", got.status, got.header.Get("X-Ringd-Bypassed"))
	}
	if text := got.text(t); text != "echo: darn it" {
		t.Fatalf("text %q, want the upstream's unprocessed", text)
	}
}
