'use strict';
// Shared by the suites: a real `ringd serve` on an ephemeral port with the fixtures in
// clients/testdata, and small HTTP helpers.

const { spawn } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const CLIENT_DIR = path.resolve(__dirname, '..');
const TESTDATA = path.resolve(CLIENT_DIR, '..', 'testdata');
const CONFIG = path.join(TESTDATA, 'ringd-test.yaml');

/** The ringd executable: $RINGD_BIN, else the repository's .venv (after `make venv`). */
function ringdBin() {
  const bin = process.env.RINGD_BIN || path.resolve(CLIENT_DIR, '..', '..', '.venv', 'bin', 'ringd');
  if (!fs.existsSync(bin)) {
    throw new Error(`ringd not found at ${bin}: run \`make venv\` at the repository root or set RINGD_BIN`);
  }
  return bin;
}

/**
 * Starts `ringd serve` on 127.0.0.1:0 (and a unix socket) with the test config, a
 * temporary store and background log. Resolves once its ready signal (one JSON line on
 * `--ready-fd 3`, see the README) says where it listens.
 */
async function startRingd({ config = CONFIG, timeoutMs = 60000 } = {}) {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'ringd-node-'));
  const socket = path.join(dir, 'ringd.sock');
  const backgroundLog = path.join(dir, 'background.jsonl');
  const proc = spawn(
    ringdBin(),
    ['serve', '--config', config, '--listen', '127.0.0.1:0', '--listen', `unix:${socket}`, '--ready-fd', '3'],
    {
      env: {
        ...process.env,
        RINGD_STORE: path.join(dir, 'ringd.db'),
        RINGD_TEST_BACKGROUND_LOG: backgroundLog,
        RINGD_LOG_LEVEL: 'WARNING',
      },
      stdio: ['ignore', 'ignore', 'pipe', 'pipe'],
    },
  );
  const stderr = [];
  proc.stderr.on('data', (chunk) => stderr.push(chunk));
  const exited = new Promise((resolve) => proc.once('exit', (code, signal) => resolve({ code, signal })));

  const target = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => fail(new Error(`ringd did not start within ${timeoutMs} ms`)), timeoutMs);
    function fail(err) {
      clearTimeout(timer);
      proc.kill('SIGKILL');
      reject(new Error(`${err.message}\n${Buffer.concat(stderr).toString()}`));
    }
    const ready = [];
    proc.stdio[3].on('data', (chunk) => ready.push(chunk));
    proc.stdio[3].on('end', () => {
      // ringd closes the fd after the line; without one it failed to start.
      const line = Buffer.concat(ready).toString().split('\n')[0];
      if (!line) {
        exited.then(({ code, signal }) => fail(new Error(`ringd exited during start-up (${code ?? signal})`)));
        return;
      }
      clearTimeout(timer);
      const tcp = JSON.parse(line).listen.find((address) => address.startsWith('127.0.0.1:'));
      resolve(tcp);
    });
  });

  return {
    target,
    unixTarget: `unix:${socket}`,
    backgroundLog,
    /** SIGTERM (drains, exits 0); resolves to the exit code. */
    async stop() {
      if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGTERM');
      const { code } = await exited;
      fs.rmSync(dir, { recursive: true, force: true });
      return code;
    },
  };
}

/** A loopback port with nothing listening on it (bound, then released). */
function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Listens `server` on an ephemeral loopback port; resolves to its base URL. */
function listen(server) {
  return new Promise((resolve) => {
    server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${server.address().port}`));
  });
}

function close(server) {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

/** POSTs JSON (an object, or a string sent as is); resolves to {status, headers, body, text}. */
function postJSON(url, body, headers = {}) {
  const bytes = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      {
        method: 'POST',
        headers: { 'content-type': 'application/json', 'content-length': bytes.length, ...headers },
      },
      (res) => {
        const chunks = [];
        res.on('data', (chunk) => chunks.push(chunk));
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let parsed = null;
          try {
            parsed = JSON.parse(text);
          } catch {
            parsed = null;
          }
          resolve({ status: res.statusCode, headers: res.headers, body: parsed, text });
        });
      },
    );
    req.on('error', reject);
    req.end(bytes);
  });
}

/** Polls `check` until it returns a truthy value or `timeoutMs` passes. */
async function eventually(check, timeoutMs = 5000, intervalMs = 25) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value;
    if (Date.now() > end) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}

function chat(content, extra = {}) {
  return { model: 'gpt-test', messages: [{ role: 'user', content }], ...extra };
}

module.exports = { startRingd, freePort, listen, close, postJSON, eventually, chat, ringdBin, CLIENT_DIR };
