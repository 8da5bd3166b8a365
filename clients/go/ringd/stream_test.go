package ringd_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/ringd/ringd/clients/go/ringd"
	"github.com/ringd/ringd/clients/go/ringdv1"
)

// sseChunk is one upstream SSE event carrying a content delta.
func sseChunk(content string) []byte {
	chunk := map[string]any{"id": "chatcmpl-s", "object": "chat.completion.chunk", "model": "gpt-test",
		"choices": []any{map[string]any{"index": 0, "delta": map[string]any{"content": content}}}}
	data, _ := json.Marshal(chunk)
	return []byte("data: " + string(data))
}

// streamed sends pieces through StreamRing in a Recv loop; it returns the released
// text and the last reply (done or block).
func streamed(t *testing.T, pieces []string) (string, *ringdv1.StreamRingResponse) {
	t.Helper()
	client := newClient(t, server.Target)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s, err := client.StreamRing(ctx, ringd.NewContext(chat(t, "hi", map[string]any{"stream": true}), nil))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var text strings.Builder
	collect := func(reply *ringdv1.StreamRingResponse) {
		for _, chunk := range reply.GetRelease().GetChunks() {
			var decoded struct {
				Choices []struct {
					Delta struct{ Content string } `json:"delta"`
				} `json:"choices"`
			}
			if err := json.Unmarshal(chunk, &decoded); err != nil {
				t.Fatalf("released chunk %s: %v", chunk, err)
			}
			for _, choice := range decoded.Choices {
				text.WriteString(choice.Delta.Content)
			}
		}
	}
	for _, piece := range pieces {
		if err := s.Send(sseChunk(piece)); err != nil {
			t.Fatal(err)
		}
		reply, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if reply.GetBlock() != nil {
			return text.String(), reply
		}
		collect(reply)
	}
	if err := s.End(); err != nil {
		t.Fatal(err)
	}
	for {
		reply, err := s.Recv()
		if err != nil {
			t.Fatal(err)
		}
		if reply.GetRelease() == nil {
			if _, err := s.Recv(); !errors.Is(err, io.EOF) {
				t.Fatalf("after the last reply: %v, want io.EOF", err)
			}
			return text.String(), reply
		}
		collect(reply)
	}
}

func TestStreamRingReleasesProcessedText(t *testing.T) {
	text, last := streamed(t, []string{"Well, ", "da", "rn it", ", the answer ", "is ", "forty-two."})
	if text != "Well, d**n it, the answer is forty-two." {
		t.Fatalf("released text %q", text)
	}
	done := last.GetDone()
	if done == nil {
		t.Fatalf("last reply %v, want done", last)
	}
	var answer map[string]any
	if err := json.Unmarshal(done.GetAnswerJson(), &answer); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(answer["object"]); got != "chat.completion" {
		t.Fatalf("answer object %q", got)
	}
	if done.GetReleasedChunks() == 0 || !done.GetBackgroundQueued() {
		t.Fatalf("released %d, background queued %v", done.GetReleasedChunks(), done.GetBackgroundQueued())
	}
	var plugins []string
	for _, result := range done.GetResults() {
		plugins = append(plugins, result.GetPlugin())
	}
	if strings.Join(plugins, ",") != "censor,stamp" {
		t.Fatalf("results %v, want the streaming plugin first", plugins)
	}
}

func TestStreamRingBlockMidStream(t *testing.T) {
	pieces := []string{"This is a long and harmless opening sentence, ", "written to be released ", "before the ",
		"forbid", "den word ", "arrives."}
	text, last := streamed(t, pieces)
	blocked := last.GetBlock()
	if blocked == nil {
		t.Fatalf("last reply %v, want block", last)
	}
	if blocked.GetBlock().GetStatusCode() != 451 || blocked.GetDecidedBy() != "censor" {
		t.Fatalf("block %v by %q", blocked.GetBlock(), blocked.GetDecidedBy())
	}
	if blocked.GetReleasedChunks() == 0 || !strings.HasPrefix(text, "This is a long") || strings.Contains(text, "forbid") {
		t.Fatalf("released %d chunks: %q", blocked.GetReleasedChunks(), text)
	}
}

func TestStreamRingBadChunkIsInvalidArgument(t *testing.T) {
	client := newClient(t, server.Target)
	s, err := client.StreamRing(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Send([]byte(`{"choices": "nope"}`)); err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(status.Convert(err).Message(), "choices") {
		t.Fatalf("Recv: %v, want INVALID_ARGUMENT naming choices", err)
	}
}
