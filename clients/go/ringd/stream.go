package ringd

import (
	"context"
	"errors"
	"io"

	"github.com/ringd/ringd/clients/go/ringdv1"
)

// Stream is one streamed answer through ringd's POST_FLIGHT (the StreamRing call):
//
//	s, err := client.StreamRing(ctx, ringd.Carry(pctx, routing)) // sends `open`
//	defer s.Close()
//	for event := range upstreamEvents {
//		if err := s.Send(event); err != nil { ... }      // one upstream SSE event or chunk JSON
//		reply, err := s.Recv()                           // exactly one reply per chunk
//		if blocked := reply.GetBlock(); blocked != nil { ... the stream is over ... }
//		for _, chunk := range reply.GetRelease().GetChunks() { write "data: <chunk>\n\n", flush }
//	}
//	s.End()                                              // then Recv: a release, then done or block
//
// Send and Recv may run in different goroutines (pipelining), but not each
// concurrently with itself. ringd answers every chunk with one StreamRingResponse,
// in order; after `end` one release and then a done or a final block. A gRPC error
// from Recv (codes.Unavailable when ringd went away) ends the stream.
type Stream struct {
	call   ringdv1.PluginEngineService_StreamRingClient
	cancel context.CancelFunc
	ended  bool
}

// StreamRing opens a streamed answer's call and sends `open` with pctx (the
// request's context with ROUTING's metadata; no response). The call lives until
// ctx ends or Close: it gets no default timeout, as a stream lasts as long as the
// upstream's answer. Close it when done (it cancels the call, freeing what ringd holds).
func (c *Client) StreamRing(ctx context.Context, pctx *ringdv1.PluginContext) (*Stream, error) {
	if pctx == nil {
		pctx = &ringdv1.PluginContext{}
	}
	ctx, cancel := context.WithCancel(ctx)
	call, err := c.engine.StreamRing(ctx)
	if err != nil {
		cancel()
		return nil, err
	}
	s := &Stream{call: call, cancel: cancel}
	open := &ringdv1.StreamRingRequest{Kind: &ringdv1.StreamRingRequest_Open{Open: &ringdv1.StreamOpen{Context: pctx}}}
	if err := s.send(open); err != nil {
		cancel()
		return nil, err
	}
	return s, nil
}

// Send sends one upstream chunk: the chunk's JSON or the raw SSE event (`data: {...}`).
func (s *Stream) Send(data []byte) error {
	return s.send(&ringdv1.StreamRingRequest{Kind: &ringdv1.StreamRingRequest_Chunk{Chunk: &ringdv1.StreamChunk{Data: data}}})
}

// End tells ringd the upstream's answer is over. Recv then yields the held tail (a
// release) and a done or a final block.
func (s *Stream) End() error {
	if s.ended {
		return nil
	}
	s.ended = true
	if err := s.send(&ringdv1.StreamRingRequest{Kind: &ringdv1.StreamRingRequest_End{End: &ringdv1.StreamEnd{}}}); err != nil {
		return err
	}
	return s.call.CloseSend()
}

// Recv is ringd's next reply: a release (GetRelease), a block (GetBlock, the
// last) or a done (GetDone, the last). After the last reply it returns io.EOF.
func (s *Stream) Recv() (*ringdv1.StreamRingResponse, error) {
	return s.call.Recv()
}

// Close cancels the call (ringd drops what it held for the stream); harmless after
// the stream finished.
func (s *Stream) Close() { s.cancel() }

// send turns the io.EOF of a broken stream into its real status (from Recv).
func (s *Stream) send(msg *ringdv1.StreamRingRequest) error {
	err := s.call.Send(msg)
	if errors.Is(err, io.EOF) {
		if _, recvErr := s.call.Recv(); recvErr != nil && !errors.Is(recvErr, io.EOF) {
			return recvErr
		}
	}
	return err
}
