package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"

	"github.com/ringd/ringd/clients/go/ringd"
)

func post(t *testing.T, url string, header map[string]string) (*http.Response, map[string]any) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, url, strings.NewReader(`{"model":"m","messages":[{"role":"user","content":"the secret plan"}]}`))
	if err != nil {
		t.Fatal(err)
	}
	for name, value := range header {
		req.Header.Set(name, value)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	var body map[string]any
	if err := json.Unmarshal(raw, &body); err != nil {
		t.Fatalf("not JSON (%d): %s", resp.StatusCode, raw)
	}
	return resp, body
}

func TestTinyGatewayFromAnotherModule(t *testing.T) {
	target := os.Getenv("RINGD_TARGET")
	if target == "" {
		t.Fatal("RINGD_TARGET is not set (scripts/test-go.sh starts ringd and sets it)")
	}
	client, err := ringd.New(target)
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	gateway := httptest.NewServer(handler(client))
	defer gateway.Close()

	resp, body := post(t, gateway.URL, map[string]string{"X-Tenant": "acme"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d, body %v", resp.StatusCode, body)
	}
	content := body["messages"].([]any)[0].(map[string]any)["content"]
	if content != "the [redacted] plan" {
		t.Fatalf("PRE_FLIGHT's MODIFY not applied: %v", content)
	}

	resp, body = post(t, gateway.URL, map[string]string{"X-Test-Block": "429"})
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d, body %v", resp.StatusCode, body)
	}
	if kind := body["error"].(map[string]any)["type"]; kind != "test_blocked" {
		t.Fatalf("error type %v", kind)
	}
	if retry := resp.Header.Get("Retry-After"); retry != "7" {
		t.Fatalf("Retry-After %q, want the block's 7", retry)
	}
}
