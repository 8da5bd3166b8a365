// Command tinygateway is the smallest gateway a Go developer writes on ringd's client,
// built by scripts/test-go.sh as a separate module that depends on
// github.com/ringd/ringd/clients/go through a replace directive, as the README says.
// It runs the INGRESS, PRE_FLIGHT and ROUTING rings and answers with the final body
// (no upstream): enough to show the module builds and works from outside the repo.
package main

import (
	"context"
	"encoding/json"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/ringd/ringd/clients/go/ringd"
	"github.com/ringd/ringd/clients/go/ringdv1"
)

// handler answers each request with ringd's verdict: the block (status, headers and
// JSON error) or the final body.
func handler(client *ringd.Client) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		raw, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 5*time.Second)
		defer cancel()
		rings := []ringdv1.PluginHook{ringd.Ingress, ringd.PreFlight, ringd.Routing}
		outs, err := client.ExecuteRings(ctx, rings, ringd.NewContext(raw, ringd.HTTPRequestInfo(r)))
		if err != nil {
			http.Error(w, "ringd unavailable: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		last := outs[len(outs)-1]
		w.Header().Set("Content-Type", "application/json")
		if last.Blocked() {
			block := last.GetBlock()
			for name, value := range block.GetHeaders() {
				w.Header().Set(name, value)
			}
			w.WriteHeader(int(block.GetStatusCode()))
			_ = json.NewEncoder(w).Encode(map[string]any{
				"error": map[string]string{"type": block.GetErrorType(), "message": block.GetMessage()},
			})
			return
		}
		body, err := last.BodyJSON()
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_, _ = w.Write(body)
	}
}

func main() {
	client, err := ringd.New(os.Getenv("RINGD_TARGET"))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	log.Fatal(http.ListenAndServe("127.0.0.1:8081", handler(client)))
}
