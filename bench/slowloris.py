"""Server memory under the slowloris pattern (issue 15, item 6): many connections, each with
many ExecuteRing streams whose request message never finishes.

Starts ``ringd serve`` (the built-in default config, or ``--config``), then opens
``--connections`` TCP connections and, on each, ``--streams`` streams that send their
HEADERS and one DATA frame announcing a 4 MiB message but carrying only ``--kib`` KiB of it,
and never end. Prints the server's RSS before, after each round, and how many
streams the server accepted (those it refused with RST_STREAM or a closed
connection are counted apart). HTTP/2 is written by hand (HPACK literals, no
Huffman), so no HTTP/2 library is needed.

    .venv/bin/python bench/slowloris.py                          # 100 x 100 x 60 KiB, 3 rounds
    .venv/bin/python bench/slowloris.py --rounds 1 --connections 20 --streams 20   # smoke
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY = 0, 1, 3, 4, 7
END_HEADERS = 0x4
PATH = "/ringd.v1.PluginEngineService/ExecuteRing"


def frame(kind: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + bytes([kind, flags]) + struct.pack(">I", stream) + payload


def literal(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name (lengths under 127)."""
    return b"\x00" + bytes([len(name)]) + name.encode() + bytes([len(value)]) + value.encode()


def headers_block(authority: str) -> bytes:
    fields = [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", PATH),
        (":authority", authority),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ]
    return b"".join(literal(name, value) for name, value in fields)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_connection(address: tuple[str, int], streams: int, kib: int) -> tuple[socket.socket | None, int]:
    """One connection with ``streams`` unfinished streams; (socket, streams written)."""
    sock = socket.create_connection(address, timeout=10)
    sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
    block = headers_block(f"{address[0]}:{address[1]}")
    body = b"\x00" + struct.pack(">I", 4 * 1024 * 1024) + b"x" * (kib * 1024)
    written = 0
    try:
        for index in range(streams):
            stream = 1 + 2 * index
            sock.sendall(frame(HEADERS, END_HEADERS, stream, block))
            for start in range(0, len(body), 16384):  # the default SETTINGS_MAX_FRAME_SIZE
                sock.sendall(frame(DATA, 0, stream, body[start : start + 16384]))
            written += 1
    except OSError:  # the server closed the connection (a connection or stream limit)
        sock.close()
        return None, written
    return sock, written


def drain(sockets: list[socket.socket]) -> tuple[int, int]:
    """Read what the server sent; (RST_STREAM frames, connections it closed)."""
    resets = closed = 0
    for sock in list(sockets):
        data = b""
        while select.select([sock], [], [], 0)[0]:
            try:
                chunk = sock.recv(1 << 16)
            except OSError:
                chunk = b""
            if not chunk:
                closed += 1
                sockets.remove(sock)
                break
            data += chunk
        offset = 0
        while offset + 9 <= len(data):
            length = int.from_bytes(data[offset : offset + 3], "big")
            resets += data[offset + 3] == RST_STREAM
            offset += 9 + length
    return resets, closed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=100)
    parser.add_argument("--streams", type=int, default=100)
    parser.add_argument("--kib", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--config", type=Path, help="a config file (default: the built-in one)")
    args = parser.parse_args()
    ringd = str(Path(sys.executable).with_name("ringd"))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [ringd, "serve", "--listen", f"127.0.0.1:{port}", "--log-level", "ERROR"]
    with tempfile.TemporaryDirectory() as scratch:
        env = {**os.environ, "RINGD_RUNTIME_DIR": scratch, "RINGD_STORE": f"{scratch}/ringd.db"}
        if args.config:
            command += ["--config", str(args.config)]
        server = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
        try:
            assert server.stdout is not None
            while "listening on" not in server.stdout.readline():
                pass
            time.sleep(1.0)
            before = rss_kib(server.pid)
            print(f"pattern: {args.connections} connections x {args.streams} streams x {args.kib} KiB")
            print(f"server RSS before: {before / 1024:.0f} MiB")
            held: list[socket.socket] = []
            for round_number in range(1, args.rounds + 1):
                accepted = 0
                for _ in range(args.connections):
                    try:
                        sock, written = open_connection(("127.0.0.1", port), args.streams, args.kib)
                    except OSError:
                        continue
                    accepted += written
                    if sock is not None:
                        held.append(sock)
                time.sleep(2.0)
                resets, closed = drain(held)
                print(
                    f"round {round_number}: RSS {rss_kib(server.pid) / 1024:.0f} MiB; {accepted} streams written, "
                    f"{resets} RST_STREAM frames seen, {closed} connections closed by the server, {len(held)} held open"
                )
            for sock in held:
                sock.close()
            time.sleep(2.0)
            print(f"server RSS after closing them: {rss_kib(server.pid) / 1024:.0f} MiB")
        finally:
            server.terminate()
            server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
