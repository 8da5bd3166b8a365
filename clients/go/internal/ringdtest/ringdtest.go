// Package ringdtest starts a real `ringd serve` for the module's tests, with the
// fixtures in clients/testdata (ringd-test.yaml, plugins.py), a temporary store and
// a background log the BACKGROUND plugin appends to.
package ringdtest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Server is a running ringd.
type Server struct {
	// Target is its TCP address, 127.0.0.1:PORT.
	Target string
	// UnixTarget is its unix socket, unix:/path.
	UnixTarget string
	// BackgroundLog is the file the BACKGROUND plugin appends one JSON line to per ring.
	BackgroundLog string

	cmd    *exec.Cmd
	dir    string
	stderr *lockedBuffer
	done   chan struct{}
	err    error
}

type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// ModuleRoot is clients/go: the nearest directory up from the working directory
// that holds go.mod.
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("ringdtest: no go.mod above the working directory")
		}
		dir = parent
	}
}

// Binary is the ringd executable: $RINGD_BIN, else ../../.venv/bin/ringd relative
// to clients/go (the repository's venv, made by `make venv`).
func Binary() (string, error) {
	bin := os.Getenv("RINGD_BIN")
	if bin == "" {
		root, err := ModuleRoot()
		if err != nil {
			return "", err
		}
		bin = filepath.Join(root, "..", "..", ".venv", "bin", "ringd")
	}
	if _, err := os.Stat(bin); err != nil {
		return "", fmt.Errorf("ringd not found at %s: run `make venv` at the repository root or set RINGD_BIN", bin)
	}
	return bin, nil
}

// ready is the one JSON line `ringd serve --ready-fd N` writes once it serves.
type ready struct {
	Listen []string `json:"listen"`
}

// Start runs `ringd serve` with clients/testdata/ringd-test.yaml on 127.0.0.1:0
// and a unix socket, and returns once ringd's ready signal (--ready-fd) gives its
// TCP address.
func Start() (*Server, error) {
	bin, err := Binary()
	if err != nil {
		return nil, err
	}
	root, err := ModuleRoot()
	if err != nil {
		return nil, err
	}
	config := filepath.Join(root, "..", "testdata", "ringd-test.yaml")
	// A short directory: unix socket paths are limited to ~100 bytes.
	dir, err := os.MkdirTemp("", "ringd-go-")
	if err != nil {
		return nil, err
	}
	socket := filepath.Join(dir, "ringd.sock")
	s := &Server{
		UnixTarget:    "unix:" + socket,
		BackgroundLog: filepath.Join(dir, "background.jsonl"),
		dir:           dir,
		stderr:        &lockedBuffer{},
		done:          make(chan struct{}),
	}
	readyRead, readyWrite, err := os.Pipe()
	if err != nil {
		return nil, err
	}
	defer readyRead.Close()
	// ExtraFiles[0] is the child's fd 3.
	s.cmd = exec.Command(bin, "serve", "--config", config, "--listen", "127.0.0.1:0", "--listen", s.UnixTarget,
		"--ready-fd", "3")
	s.cmd.ExtraFiles = []*os.File{readyWrite}
	s.cmd.Env = append(os.Environ(),
		"RINGD_STORE="+filepath.Join(dir, "ringd.db"),
		"RINGD_TEST_BACKGROUND_LOG="+s.BackgroundLog,
		"RINGD_LOG_LEVEL=WARNING",
	)
	s.cmd.Stderr = s.stderr
	err = s.cmd.Start()
	readyWrite.Close() // the child holds its copy: its exit is the end of the pipe
	if err != nil {
		_ = os.RemoveAll(dir) // best effort: the start error is what matters
		return nil, fmt.Errorf("start ringd: %w", err)
	}
	go func() {
		s.err = s.cmd.Wait()
		close(s.done)
	}()

	signal := make(chan []byte, 1)
	go func() {
		// ringd closes the fd after its one line, or exits without writing one.
		line, _ := io.ReadAll(readyRead)
		signal <- line
	}()
	fail := func(format string, args ...any) (*Server, error) {
		_ = s.cmd.Process.Kill()
		<-s.done
		_ = os.RemoveAll(dir) // best effort
		return nil, fmt.Errorf(format, args...)
	}
	select {
	case line := <-signal:
		var r ready
		if len(line) == 0 {
			<-s.done
			return fail("ringd exited during start-up (%v): %s", s.err, s.stderr.String())
		}
		if err := json.Unmarshal(line, &r); err != nil {
			return fail("ringd's ready signal %q: %v", line, err)
		}
		for _, address := range r.Listen {
			if strings.HasPrefix(address, "127.0.0.1:") {
				s.Target = address
				return s, nil
			}
		}
		return fail("ringd's ready signal has no TCP address: %s", line)
	case <-time.After(60 * time.Second):
		return fail("ringd did not start within 60s: %s", s.stderr.String())
	}
}

// Stop sends SIGTERM (ringd drains and exits 0) and waits; an exit other than 0
// is an error carrying ringd's stderr.
func (s *Server) Stop() error {
	defer os.RemoveAll(s.dir)
	if err := s.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return err
	}
	select {
	case <-s.done:
	case <-time.After(20 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.done
		return errors.New("ringd did not exit within 20s of SIGTERM")
	}
	if s.err != nil {
		return fmt.Errorf("ringd: %w: %s", s.err, s.stderr.String())
	}
	return nil
}

// BackgroundLines are the JSON lines the BACKGROUND plugin has written so far.
func (s *Server) BackgroundLines() []map[string]any {
	data, err := os.ReadFile(s.BackgroundLog)
	if err != nil {
		return nil
	}
	var lines []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var entry map[string]any
		if json.Unmarshal([]byte(line), &entry) == nil {
			lines = append(lines, entry)
		}
	}
	return lines
}

// FreeAddr is a loopback address with nothing listening on it (bound, then released).
func FreeAddr() (string, error) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	addr := listener.Addr().String()
	return addr, listener.Close()
}
