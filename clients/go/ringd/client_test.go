package ringd_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	"github.com/ringd/ringd/clients/go/internal/ringdtest"
	"github.com/ringd/ringd/clients/go/ringd"
	"github.com/ringd/ringd/clients/go/ringdv1"
)

var server *ringdtest.Server

func TestMain(m *testing.M) {
	var err error
	server, err = ringdtest.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func newClient(t *testing.T, target string) *ringd.Client {
	t.Helper()
	client, err := ringd.New(target, ringd.WithTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return client
}

func chat(t *testing.T, content string, extra map[string]any) []byte {
	t.Helper()
	body := map[string]any{"model": "gpt-test", "messages": []any{map[string]any{"role": "user", "content": content}}}
	for key, value := range extra {
		body[key] = value
	}
	data, err := json.Marshal(body)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func withHeaders(pctx *ringdv1.PluginContext, headers map[string]string) *ringdv1.PluginContext {
	pctx.Request = &ringdv1.RequestInfo{Method: "POST", Path: "/v1/chat/completions", Headers: headers}
	return pctx
}

// decode parses one of Outcome's JSON payloads: decode(t)(out.BodyJSON()).
func decode(t *testing.T) func([]byte, error) map[string]any {
	return func(data []byte, err error) map[string]any {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		var out map[string]any
		if err := json.Unmarshal(data, &out); err != nil {
			t.Fatalf("%v: %s", err, data)
		}
		return out
	}
}

func lastContent(body map[string]any) any {
	messages := body["messages"].([]any)
	return messages[len(messages)-1].(map[string]any)["content"]
}

func TestHealth(t *testing.T) {
	got, err := newClient(t, server.Target).Health(context.Background())
	if err != nil || got != healthpb.HealthCheckResponse_SERVING {
		t.Fatalf("health = %v, %v; want SERVING", got, err)
	}
}

func TestPassthroughAnswersInTheCallersForm(t *testing.T) {
	client := newClient(t, server.Target)
	pctx := withHeaders(ringd.NewContext(chat(t, "hi", nil), nil), map[string]string{"x-tenant": "acme"})
	out, err := client.ExecuteRing(context.Background(), ringd.Ingress, pctx)
	if err != nil {
		t.Fatal(err)
	}
	if out.GetAction() != ringd.Passthrough || out.Ended() {
		t.Fatalf("action = %v", out.GetAction())
	}
	if out.GetBodyJson() == nil {
		t.Fatal("body not in the caller's form (body_json)")
	}
	if got := out.MetadataMap(); !reflect.DeepEqual(got, map[string]any{"tenant": "acme"}) {
		t.Fatalf("metadata = %v", got)
	}
	var plugins []string
	for _, result := range out.GetResults() {
		plugins = append(plugins, result.GetPlugin()+":"+result.GetOutcome().String())
	}
	want := []string{"tenant:PLUGIN_OUTCOME_OK", "header_block:PLUGIN_OUTCOME_OK"}
	if !reflect.DeepEqual(plugins, want) {
		t.Fatalf("results = %v, want %v", plugins, want)
	}
	if out.GetConfigVersion() != "client-tests" || out.GetGeneration() < 1 {
		t.Fatalf("config version %q generation %d", out.GetConfigVersion(), out.GetGeneration())
	}
}

func TestModify(t *testing.T) {
	out, err := newClient(t, server.Target).ExecuteRing(context.Background(), ringd.PreFlight,
		ringd.NewContext(chat(t, "my secret plan", nil), nil))
	if err != nil {
		t.Fatal(err)
	}
	if out.GetAction() != ringd.Modify {
		t.Fatalf("action = %v", out.GetAction())
	}
	body := decode(t)(out.BodyJSON())
	if got := lastContent(body); got != "my [redacted] plan" {
		t.Fatalf("content = %v", got)
	}
}

func TestBlock(t *testing.T) {
	pctx := withHeaders(ringd.NewContext(chat(t, "hi", nil), nil), map[string]string{"x-test-block": "429"})
	out, err := newClient(t, server.Target).ExecuteRing(context.Background(), ringd.Ingress, pctx)
	if err != nil {
		t.Fatal(err)
	}
	block := out.GetBlock()
	if !out.Blocked() || !out.Ended() || block.GetStatusCode() != 429 || block.GetErrorType() != "test_blocked" ||
		block.GetMessage() != "blocked with 429" || out.GetDecidedBy() != "header_block" {
		t.Fatalf("outcome = %v", out)
	}
	if got := block.GetHeaders(); len(got) != 1 || got["Retry-After"] != "7" {
		t.Fatalf("block headers = %v, want Retry-After: 7", got)
	}
	answer := http.Header{}
	out.SetBlockHeaders(answer)
	if answer.Get("Retry-After") != "7" {
		t.Fatalf("SetBlockHeaders set %v", answer)
	}
}

func TestCacheHit(t *testing.T) {
	out, err := newClient(t, server.Target).ExecuteRing(context.Background(), ringd.PreFlight,
		ringd.NewContext(chat(t, "cached?", nil), nil))
	if err != nil {
		t.Fatal(err)
	}
	if !out.CacheHit() || out.GetCachedResponseJson() == nil {
		t.Fatalf("outcome = %v", out)
	}
	cached := decode(t)(out.CachedResponseJSON())
	if cached["id"] != "chatcmpl-cached" {
		t.Fatalf("cached = %v", cached)
	}
}

func TestMetadataCarriedAcrossRings(t *testing.T) {
	client := newClient(t, server.Target)
	ctx := context.Background()
	pctx := withHeaders(ringd.NewContext(chat(t, "hi", map[string]any{"model": "alias-fast"}), nil),
		map[string]string{"x-tenant": "acme"})
	ingress, err := client.ExecuteRing(ctx, ringd.Ingress, pctx)
	if err != nil {
		t.Fatal(err)
	}
	pctx = ringd.Carry(pctx, ingress)
	routing, err := client.ExecuteRing(ctx, ringd.Routing, pctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := decode(t)(routing.BodyJSON())["model"]; got != "fast-model-v2" {
		t.Fatalf("model = %v", got)
	}
	if got := routing.MetadataMap()["route"]; got != "acme/alias-fast" {
		t.Fatalf("route = %v (tenant not carried from INGRESS)", got)
	}
	pctx = ringd.WithResponse(ringd.Carry(pctx, routing), []byte(`{"id": "x", "choices": []}`))
	post, err := client.ExecuteRing(ctx, ringd.PostFlight, pctx)
	if err != nil {
		t.Fatal(err)
	}
	stamp := decode(t)(post.ResponseJSON())["x_ringd"]
	if !reflect.DeepEqual(stamp, map[string]any{"tenant": "acme", "route": "acme/alias-fast"}) {
		t.Fatalf("x_ringd = %v", stamp)
	}
}

func TestExecuteRingsStopsAtTheFirstBlock(t *testing.T) {
	client := newClient(t, server.Target)
	rings := []ringdv1.PluginHook{ringd.Ingress, ringd.PreFlight, ringd.Routing}
	all, err := client.ExecuteRings(context.Background(), rings,
		ringd.NewContext(chat(t, "hi", map[string]any{"model": "alias-fast"}), nil))
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 || all[2].GetRing() != ringd.Routing || all[2].MetadataMap()["route"] != "anonymous/alias-fast" {
		t.Fatalf("outcomes = %v", all)
	}
	pctx := withHeaders(ringd.NewContext(chat(t, "hi", nil), nil), map[string]string{"x-test-block": "451"})
	blocked, err := client.ExecuteRings(context.Background(), rings, pctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(blocked) != 1 || blocked[0].GetBlock().GetStatusCode() != 451 {
		t.Fatalf("outcomes = %v", blocked)
	}
}

func TestBackgroundIsQueuedAndRunsLater(t *testing.T) {
	metadata, err := ringd.Metadata(map[string]any{"tenant": "bg-tenant"})
	if err != nil {
		t.Fatal(err)
	}
	pctx := ringd.WithResponse(ringd.NewContext(chat(t, "hi", nil), nil), []byte(`{"model": "bg-model"}`))
	pctx.Metadata = metadata
	pctx.RequestId = "go-req-bg-1"
	out, err := newClient(t, server.Target).ExecuteRing(context.Background(), ringd.Background, pctx)
	if err != nil {
		t.Fatal(err)
	}
	if !out.GetQueued() || len(out.GetResults()) != 0 {
		t.Fatalf("outcome = %v", out)
	}
	want := map[string]any{"request_id": "go-req-bg-1", "tenant": "bg-tenant", "model": "bg-model"}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		for _, line := range server.BackgroundLines() {
			if reflect.DeepEqual(line, want) {
				return
			}
		}
		time.Sleep(25 * time.Millisecond)
	}
	t.Fatalf("background line %v not written: %v", want, server.BackgroundLines())
}

func TestTraceparentAndDeadline(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	ctx = ringd.WithTraceparent(ctx, "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "")
	out, err := newClient(t, server.Target).ExecuteRing(ctx, ringd.PreFlight, ringd.NewContext(chat(t, "hi", nil), nil))
	if err != nil || out.GetAction() != ringd.Passthrough {
		t.Fatalf("outcome = %v, %v", out, err)
	}
	expired, cancelExpired := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer cancelExpired()
	_, err = newClient(t, server.Target).ExecuteRing(expired, ringd.PreFlight, nil)
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
}

func TestBadInputIsInvalidArgument(t *testing.T) {
	_, err := newClient(t, server.Target).ExecuteRing(context.Background(), ringd.Ingress,
		ringd.NewContext([]byte("[1, 2]"), nil))
	st := status.Convert(err)
	if st.Code() != codes.InvalidArgument || !strings.Contains(st.Message(), "body_json") {
		t.Fatalf("err = %v", err)
	}
	_, err = newClient(t, server.Target).ExecuteRing(context.Background(), ringdv1.PluginHook_PLUGIN_HOOK_UNSPECIFIED, nil)
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("err = %v", err)
	}
}

func TestAdmin(t *testing.T) {
	// The test config's admin token (clients/testdata/ringd-test.yaml): admin is on TCP only with one.
	client, err := ringd.New(server.Target, ringd.WithTimeout(5*time.Second), ringd.WithAdminToken("ringd-client-tests-admin-token"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	ctx := context.Background()
	listed, err := client.ListPlugins(ctx, ringd.PreFlight)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, plugin := range listed.GetPlugins() {
		names = append(names, plugin.GetName()+":"+plugin.GetStatus().String())
	}
	want := []string{"redact:PLUGIN_STATUS_ACTIVE", "cache:PLUGIN_STATUS_ACTIVE"}
	if !reflect.DeepEqual(names, want) || listed.GetConfigVersion() != "client-tests" {
		t.Fatalf("plugins = %v (config %q)", names, listed.GetConfigVersion())
	}

	disabled, err := client.SetPluginEnabled(ctx, "cache", false)
	if err != nil || disabled.GetStatus() != ringdv1.PluginStatus_PLUGIN_STATUS_DISABLED {
		t.Fatalf("disable = %v, %v", disabled, err)
	}
	out, err := client.ExecuteRing(ctx, ringd.PreFlight, ringd.NewContext(chat(t, "cached?", nil), nil))
	enabled, enableErr := client.SetPluginEnabled(ctx, "cache", true)
	if err != nil || out.GetAction() != ringd.Passthrough {
		t.Fatalf("with cache disabled: %v, %v", out, err)
	}
	if enableErr != nil || enabled.GetStatus() != ringdv1.PluginStatus_PLUGIN_STATUS_ACTIVE {
		t.Fatalf("enable = %v, %v", enabled, enableErr)
	}
	if _, err := client.SetPluginEnabled(ctx, "no_such_plugin", true); status.Code(err) != codes.NotFound {
		t.Fatalf("unknown plugin: %v", err)
	}

	reloaded, err := client.ReloadConfig(ctx)
	if err != nil || reloaded.GetGeneration() != listed.GetGeneration()+1 {
		t.Fatalf("reload = %v, %v (was generation %d)", reloaded, err, listed.GetGeneration())
	}
}

func TestUnixSocket(t *testing.T) {
	client := newClient(t, server.UnixTarget)
	out, err := client.ExecuteRing(context.Background(), ringd.PreFlight, ringd.NewContext(chat(t, "cached?", nil), nil))
	if err != nil || !out.CacheHit() {
		t.Fatalf("outcome = %v, %v", out, err)
	}
}

func TestRingdDownIsUnavailable(t *testing.T) {
	addr, err := ringdtest.FreeAddr()
	if err != nil {
		t.Fatal(err)
	}
	_, err = newClient(t, addr).ExecuteRing(context.Background(), ringd.Ingress, ringd.NewContext(chat(t, "hi", nil), nil))
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("err = %v, want Unavailable", err)
	}
}
