package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/ringd/ringd/clients/go/examples/fakeupstream"
	"github.com/ringd/ringd/clients/go/internal/ringdtest"
	"github.com/ringd/ringd/clients/go/ringd"
)

var (
	ringdServer *ringdtest.Server
	upstream    *fakeupstream.Server
)

func TestMain(m *testing.M) {
	code, err := runSuite(m)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func runSuite(m *testing.M) (int, error) {
	var err error
	if ringdServer, err = ringdtest.Start(); err != nil {
		return 1, err
	}
	if upstream, err = fakeupstream.Start("127.0.0.1:0"); err != nil {
		_ = ringdServer.Stop() // the start error is what matters
		return 1, err
	}
	code := m.Run()
	_ = upstream.Close() // an in-process listener; nothing to report
	return code, ringdServer.Stop()
}

// gateway serves the example gateway in-process on an ephemeral port and returns
// its chat URL. The upstream's record is reset.
func gateway(t *testing.T, target string, failOpen bool) string {
	t.Helper()
	client, err := ringd.New(target)
	if err != nil {
		t.Fatal(err)
	}
	server := httptest.NewServer(&Gateway{
		Client:      client,
		UpstreamURL: upstream.URL,
		FailOpen:    failOpen,
		Deadline:    2 * time.Second,
		Log:         log.New(io.Discard, "", 0),
	})
	t.Cleanup(func() {
		server.Close()
		_ = client.Close()
	})
	upstream.Reset()
	return server.URL + "/v1/chat/completions"
}

type reply struct {
	status int
	header http.Header
	body   map[string]any
}

func post(t *testing.T, url string, body any, headers map[string]string) reply {
	t.Helper()
	data, ok := body.([]byte)
	if !ok {
		var err error
		if data, err = json.Marshal(body); err != nil {
			t.Fatal(err)
		}
	}
	req, err := http.NewRequest(http.MethodPost, url, bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for name, value := range headers {
		req.Header.Set(name, value)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	out := reply{status: resp.StatusCode, header: resp.Header}
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(raw, &out.body) // a non-JSON answer leaves body nil; tests check it
	return out
}

func chat(content string, extra map[string]any) map[string]any {
	body := map[string]any{"model": "gpt-test", "messages": []any{map[string]any{"role": "user", "content": content}}}
	for key, value := range extra {
		body[key] = value
	}
	return body
}

// path walks a decoded JSON value: path(v, "choices", 0, "message", "content").
func path(value any, keys ...any) any {
	for _, key := range keys {
		switch k := key.(type) {
		case string:
			object, _ := value.(map[string]any)
			value = object[k]
		case int:
			list, _ := value.([]any)
			if k >= len(list) {
				return nil
			}
			value = list[k]
		}
	}
	return value
}

func TestPass(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	got := post(t, url, chat("hello there", nil), map[string]string{"X-Tenant": "acme", "X-Request-Id": "go-req-pass-1"})
	if got.status != http.StatusOK {
		t.Fatalf("status %d: %v", got.status, got.body)
	}
	if got.header.Get("X-Request-Id") != "go-req-pass-1" {
		t.Fatalf("x-request-id = %q", got.header.Get("X-Request-Id"))
	}
	if c := path(got.body, "choices", 0, "message", "content"); c != "echo: hello there" {
		t.Fatalf("content = %v", c)
	}
	// POST_FLIGHT can only know the tenant (set in INGRESS) if the gateway carried the metadata.
	if stamp := path(got.body, "x_ringd"); !reflect.DeepEqual(stamp, map[string]any{"tenant": "acme", "route": "acme/gpt-test"}) {
		t.Fatalf("x_ringd = %v", stamp)
	}
	if requests := upstream.Requests(); len(requests) != 1 || !reflect.DeepEqual(requests[0], chat("hello there", nil)) {
		t.Fatalf("upstream saw %v", requests)
	}
	want := map[string]any{"request_id": "go-req-pass-1", "tenant": "acme", "model": "gpt-test"}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range ringdServer.BackgroundLines() {
			if reflect.DeepEqual(line, want) {
				return
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("BACKGROUND did not record %v: %v", want, ringdServer.BackgroundLines())
}

func TestModifyChangesWhatGoesUpstream(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	got := post(t, url, chat("my secret is safe", map[string]any{"model": "alias-fast"}), nil)
	if got.status != http.StatusOK {
		t.Fatalf("status %d: %v", got.status, got.body)
	}
	requests := upstream.Requests()
	if len(requests) != 1 {
		t.Fatalf("upstream calls = %d", len(requests))
	}
	if c := path(requests[0], "messages", 0, "content"); c != "my [redacted] is safe" {
		t.Fatalf("upstream saw content %v (PRE_FLIGHT redaction)", c)
	}
	if m := requests[0]["model"]; m != "fast-model-v2" {
		t.Fatalf("upstream saw model %v (ROUTING rewrite)", m)
	}
	if c := path(got.body, "choices", 0, "message", "content"); c != "echo: my [redacted] is safe" {
		t.Fatalf("answer content = %v", c)
	}
}

func TestBlockAnswersItsStatus(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	for _, code := range []int{429, 403, 451} {
		got := post(t, url, chat("hi", nil), map[string]string{"X-Test-Block": strconv.Itoa(code)})
		want := map[string]any{"error": map[string]any{"type": "test_blocked", "message": fmt.Sprintf("blocked with %d", code)}}
		if got.status != code || !reflect.DeepEqual(got.body, want) {
			t.Fatalf("status %d body %v; want %d %v", got.status, got.body, code, want)
		}
		if ct := got.header.Get("Content-Type"); ct != "application/json" {
			t.Fatalf("content type %q", ct)
		}
		// The block's headers reach the client: the test plugin sets Retry-After on a 429 only.
		wantRetry := ""
		if code == 429 {
			wantRetry = "7"
		}
		if retry := got.header.Get("Retry-After"); retry != wantRetry {
			t.Fatalf("HTTP %d: Retry-After %q, want %q", code, retry, wantRetry)
		}
	}
	if n := upstream.Count(); n != 0 {
		t.Fatalf("upstream called %d times", n)
	}
}

func TestCacheHitSkipsUpstream(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	got := post(t, url, chat("cached?", nil), nil)
	if got.status != http.StatusOK || got.header.Get("X-Ringd-Cache") != "hit" || got.body["id"] != "chatcmpl-cached" {
		t.Fatalf("status %d header %q body %v", got.status, got.header.Get("X-Ringd-Cache"), got.body)
	}
	if c := path(got.body, "choices", 0, "message", "content"); c != "from cache" {
		t.Fatalf("content = %v", c)
	}
	if n := upstream.Count(); n != 0 {
		t.Fatalf("upstream called %d times", n)
	}
}

func TestRingdDownIs503(t *testing.T) {
	addr, err := ringdtest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	got := post(t, gateway(t, addr, false), chat("hello", nil), nil)
	if got.status != http.StatusServiceUnavailable || path(got.body, "error", "type") != "ringd_unavailable" {
		t.Fatalf("status %d body %v", got.status, got.body)
	}
	if n := upstream.Count(); n != 0 {
		t.Fatalf("upstream called %d times", n)
	}
}

func TestRingdDownFailOpenPassesThrough(t *testing.T) {
	addr, err := ringdtest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	body := chat("my secret", map[string]any{"model": "alias-fast"})
	got := post(t, gateway(t, addr, true), body, nil)
	if got.status != http.StatusOK {
		t.Fatalf("status %d body %v", got.status, got.body)
	}
	if h := got.header.Get("X-Ringd-Bypassed"); h != "ingress,pre_flight,routing,post_flight" {
		t.Fatalf("x-ringd-bypassed = %q", h)
	}
	if c := path(got.body, "choices", 0, "message", "content"); c != "echo: my secret" {
		t.Fatalf("content = %v", c)
	}
	if requests := upstream.Requests(); len(requests) != 1 || !reflect.DeepEqual(requests[0], body) {
		t.Fatalf("upstream saw %v, want the body unchanged", requests)
	}
}

func TestBadRequests(t *testing.T) {
	url := gateway(t, ringdServer.Target, false)
	for _, raw := range []string{"{not json", "[1]", "null"} {
		if got := post(t, url, []byte(raw), nil); got.status != http.StatusBadRequest || path(got.body, "error", "type") != "invalid_request_error" {
			t.Fatalf("%s: status %d body %v", raw, got.status, got.body)
		}
	}
	if got := post(t, url[:len(url)-len("/chat/completions")]+"/nothing", chat("hi", nil), nil); got.status != http.StatusNotFound {
		t.Fatalf("wrong path: %d", got.status)
	}
	if got := post(t, url, chat(strings.Repeat("x", 5<<20), nil), nil); got.status != http.StatusRequestEntityTooLarge || path(got.body, "error", "type") != "request_too_large" {
		t.Fatalf("oversize: status %d body %v", got.status, got.body)
	}
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusMethodNotAllowed {
		t.Fatalf("GET: %d", resp.StatusCode)
	}
	if n := upstream.Count(); n != 0 {
		t.Fatalf("upstream called %d times", n)
	}
}

// TestRun drives the program itself: flags and env, port 0, its own fake upstream.
func TestRun(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	stdout, writer := io.Pipe()
	env := map[string]string{"RINGD_TARGET": ringdServer.Target}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"-port", "0"}, func(name string) string { return env[name] }, writer)
		writer.Close()
	}()
	listening := regexp.MustCompile(`^gateway listening on (http://[\d.]+:\d+)$`)
	base := make(chan string, 1)
	go func() {
		scanner := bufio.NewScanner(stdout)
		for scanner.Scan() {
			if match := listening.FindStringSubmatch(scanner.Text()); match != nil {
				base <- match[1]
			}
		}
	}()
	var url string
	select {
	case url = <-base:
	case err := <-done:
		t.Fatalf("run ended early: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("gateway did not print its address")
	}
	url += "/v1/chat/completions"
	got := post(t, url, chat("my secret", map[string]any{"model": "alias-fast"}), nil)
	if c := path(got.body, "choices", 0, "message", "content"); got.status != 200 || c != "echo: my [redacted]" || got.body["model"] != "fast-model-v2" {
		t.Fatalf("status %d body %v", got.status, got.body)
	}
	if blocked := post(t, url, chat("hi", nil), map[string]string{"X-Test-Block": "429"}); blocked.status != 429 {
		t.Fatalf("block: %d", blocked.status)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}
}

func TestParseConfig(t *testing.T) {
	env := map[string]string{"RINGD_TARGET": "unix:/tmp/r.sock", "UPSTREAM_URL": "http://u", "PORT": "9000", "RINGD_FAIL_OPEN": "1", "RINGD_DEADLINE_MS": "150"}
	cfg, err := parseConfig(nil, func(name string) string { return env[name] })
	if err != nil {
		t.Fatal(err)
	}
	want := config{ringdTarget: "unix:/tmp/r.sock", upstreamURL: "http://u", host: "127.0.0.1", port: 9000, failOpen: true, deadline: 150 * time.Millisecond}
	if cfg != want {
		t.Fatalf("config = %+v, want %+v", cfg, want)
	}
	cfg, err = parseConfig([]string{"-port", "0", "-fail-open=false", "-ringd", "h:1"}, func(name string) string { return env[name] })
	if err != nil || cfg.port != 0 || cfg.failOpen || cfg.ringdTarget != "h:1" {
		t.Fatalf("flags: %+v, %v", cfg, err)
	}
}
