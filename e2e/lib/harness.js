'use strict';
// Starts the processes the browser tests talk to, on free loopback ports, and stops them
// again: the standalone `roomcast` binary, or the distributed stack (redis-server, the
// MongoDB-wire server secantusd-py, persister, and N x (fanout, gateway)). It mirrors
// roomcast/tests/support/mod.rs. Output of every process goes to test-output/logs/e2e-*.log.
//
// A missing binary is an error that says what to run; nothing is ever skipped.
// Every process started here is killed when the test file's process exits, also after a
// failure or a signal, so nothing is left listening.

const { spawn, spawnSync } = require('node:child_process');
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');

const ROOT = path.resolve(__dirname, '..', '..');
const OUT_DIR = path.join(ROOT, 'test-output');
const LOG_DIR = path.join(OUT_DIR, 'logs');
const BIN_DIR = process.env.ROOMCAST_BIN_DIR
  ? path.resolve(process.env.ROOMCAST_BIN_DIR)
  : path.join(ROOT, 'target', 'debug');
const SECANTUSD = process.env.ROOMCAST_SECANTUSD
  || path.join(ROOT, '.tools', 'venv-secantus', 'bin', 'secantusd-py');

const START_LIMIT_MS = 60_000; // secantusd-py (Python) can be slow to come up on a busy machine

// ------------------------------------------------------------------ process bookkeeping

const running = new Set(); // every Proc not yet reaped

function killAllNow() {
  for (const proc of running) {
    try { proc.child.kill('SIGKILL'); } catch (_) { /* already gone */ }
  }
}
process.on('exit', killAllNow);
for (const signal of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.once(signal, () => {
    killAllNow();
    process.exit(128 + (os.constants.signals[signal] || 1));
  });
}

function executable(file, hint) {
  try {
    fs.accessSync(file, fs.constants.X_OK);
  } catch (_) {
    throw new Error(`${file} is missing or not executable: ${hint}`);
  }
  return file;
}

function bin(name) {
  return executable(path.join(BIN_DIR, name),
    'build the binaries first with `cargo build --workspace --bins` (these tests never build Rust)');
}

function which(name, hint) {
  for (const dir of (process.env.PATH || '').split(':')) {
    const file = path.join(dir || '.', name);
    try { fs.accessSync(file, fs.constants.X_OK); return file; } catch (_) { /* next */ }
  }
  throw new Error(`${name} is not installed: ${hint}`);
}

function tail(file, lines = 25) {
  try {
    const text = fs.readFileSync(file, 'utf8').trimEnd().split('\n');
    return text.slice(-lines).join('\n');
  } catch (_) {
    return '(no log)';
  }
}

class Proc {
  constructor(name, program, args) {
    this.name = name;
    this.program = program;
    this.args = args;
    this.log = path.join(LOG_DIR, `e2e-${name}.log`);
    this.exited = null; // { code, signal } once it ended
    fs.mkdirSync(LOG_DIR, { recursive: true });
    const fd = fs.openSync(this.log, 'w');
    fs.writeSync(fd, `# ${[program, ...args].join(' ')}\n`);
    this.child = spawn(program, args, {
      stdio: ['ignore', fd, fd],
      env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' },
    });
    fs.closeSync(fd);
    // Not keeping node alive: if a test file forgets to stop it, the file still ends, and
    // the 'exit' handler above kills it.
    this.child.unref();
    running.add(this);
    this.done = new Promise((resolve) => {
      this.child.once('exit', (code, signal) => {
        this.exited = { code, signal };
        running.delete(this);
        resolve(this.exited);
      });
      this.child.once('error', (err) => {
        this.exited = { code: null, signal: null, error: err };
        running.delete(this);
        resolve(this.exited);
      });
    });
  }

  /** Throws a helpful error if the process has ended already. */
  checkAlive(what) {
    if (!this.exited) return;
    const how = this.exited.error ? `could not start: ${this.exited.error.message}`
      : `exited with ${this.exited.signal || `code ${this.exited.code}`}`;
    throw new Error(`${this.name} ${how} while ${what}; ${this.log} ends with:\n${tail(this.log)}`);
  }

  /** SIGTERM, then SIGKILL if it is still there after `graceMs`. */
  async stop(graceMs = 5000) {
    if (this.exited) return this.exited;
    // Held while waiting: with the child unref'd (see the constructor) and nothing else
    // pending, node would otherwise end the test file before the 'exit' event arrives.
    this.child.ref();
    try { this.child.kill('SIGTERM'); } catch (_) { /* gone */ }
    let timer;
    const killed = new Promise((resolve) => {
      timer = setTimeout(() => {
        try { this.child.kill('SIGKILL'); } catch (_) { /* gone */ }
        resolve();
      }, graceMs);
    });
    await Promise.race([this.done, killed]);
    clearTimeout(timer);
    return this.done;
  }
}

// ------------------------------------------------------------------ ports and waiting

const givenPorts = new Set();

/** A loopback port nothing listens on, never handed out twice by this process. */
async function freePort() {
  for (;;) {
    const port = await new Promise((resolve, reject) => {
      const srv = net.createServer();
      srv.unref();
      srv.once('error', reject);
      srv.listen(0, '127.0.0.1', () => {
        const { port: p } = srv.address();
        srv.close(() => resolve(p));
      });
    });
    if (!givenPorts.has(port)) {
      givenPorts.add(port);
      return port;
    }
  }
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => { sock.destroy(); resolve(true); });
    sock.once('error', () => resolve(false));
  });
}

/** GET http://127.0.0.1:port/path: { status, body }, or null if nothing answered. */
function httpGet(port, urlPath, timeoutMs = 5000) {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: urlPath, timeout: timeoutMs }, (res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
      res.on('error', () => resolve(null));
    });
    req.on('timeout', () => req.destroy());
    req.on('error', () => resolve(null));
  });
}

async function waitUntil(proc, what, check, limitMs = START_LIMIT_MS) {
  const deadline = Date.now() + limitMs;
  let last;
  for (;;) {
    proc.checkAlive(what);
    last = await check();
    if (last === true) return;
    if (Date.now() > deadline) {
      throw new Error(`${proc.name}: timed out after ${limitMs / 1000}s ${what}`
        + `${typeof last === 'string' ? ` (last answer: ${last.trim()})` : ''}; ${proc.log} ends with:\n${tail(proc.log)}`);
    }
    await sleep(100);
  }
}

const waitListening = (proc, port) =>
  waitUntil(proc, `waiting for it to listen on 127.0.0.1:${port}`, () => canConnect(port));

const waitReady = (proc, port) =>
  waitUntil(proc, `waiting for GET http://127.0.0.1:${port}/readyz to answer 200`, async () => {
    const res = await httpGet(port, '/readyz');
    if (!res) return false;
    return res.status === 200 ? true : `${res.status} ${res.body}`;
  });

function tempDir(prefix) {
  return fs.mkdtempSync(path.join(os.tmpdir(), `roomcast-e2e-${prefix}-`));
}

/** Stops processes in reverse order of start, then removes the temp dirs. */
async function stopAll(procs, dirs) {
  for (const proc of [...procs].reverse()) {
    await proc.stop();
  }
  for (const dir of dirs) fs.rmSync(dir, { recursive: true, force: true });
}

// ------------------------------------------------------------------ what the tests start

/**
 * The one-process server: `roomcast --listen --metrics-listen --api-listen --data-dir TMP`, followed by
 * `extraArgs` (e.g. `['--auth-required', ...]`).
 * Returns { url, port, metricsPort, stop() }.
 */
async function startStandalone(name, extraArgs = []) {
  const program = bin('roomcast');
  const dir = tempDir(name);
  const procs = [];
  try {
    const [port, metrics, api] = [await freePort(), await freePort(), await freePort()];
    const proc = new Proc(`${name}-roomcast`, program, [
      '--listen', `127.0.0.1:${port}`,
      '--metrics-listen', `127.0.0.1:${metrics}`,
      '--api-listen', `127.0.0.1:${api}`,
      '--data-dir', dir,
      '--drain-seconds', '1',
      ...extraArgs,
    ]);
    procs.push(proc);
    await waitReady(proc, port);
    return {
      url: `http://127.0.0.1:${port}`,
      port,
      metricsPort: metrics,
      // The server API, with the key roomcast made in its data directory.
      apiUrl: `http://127.0.0.1:${api}`,
      apiKey: () => fs.readFileSync(path.join(dir, 'api-key'), 'utf8').trim(),
      procs,
      stop: () => stopAll(procs, [dir]),
    };
  } catch (err) {
    await stopAll(procs, [dir]);
    throw err;
  }
}

/**
 * A self-signed ECDSA P-256 certificate for localhost and 127.0.0.1, valid 10 days (short
 * enough for a browser to accept it by hash, `serverCertificateHashes`), written to `dir`.
 * Returns { cert, key } (PEM file paths).
 */
function selfSignedCert(dir) {
  const openssl = which('openssl', 'install Debian\'s openssl (apt-get install -y openssl)');
  const cert = path.join(dir, 'wt-cert.pem');
  const key = path.join(dir, 'wt-key.pem');
  const res = spawnSync(openssl, [
    'req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-days', '10', '-nodes',
    '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1',
    '-keyout', key, '-out', cert,
  ], { encoding: 'utf8' });
  if (res.status !== 0) throw new Error(`openssl could not make a certificate: ${res.error || res.stderr}`);
  return { cert, key };
}

/**
 * redis-server + secantusd-py + persister + N x (fanout, gateway), every gateway ready.
 * Options: `gatewayArgs` (more arguments for every gateway, or a function of the gateway's
 * index returning them), `webtransport` (true: each gateway serves WebTransport with a
 * self-signed certificate made here, `--webtransport-cert FILE --webtransport-key FILE`).
 * Returns { gateways: [url...], ports, procs, stop() }.
 */
async function startStack(name, gatewayCount = 2, { gatewayArgs = [], webtransport = false } = {}) {
  // Everything must be there before anything starts.
  const redisServer = which('redis-server', 'run scripts/setup-test-deps.sh (it installs Debian\'s redis-server)');
  const secantusd = executable(SECANTUSD, 'run scripts/setup-test-deps.sh (it installs SecantusDB into .tools/)');
  const [persisterBin, fanoutBin, gatewayBin] = [bin('persister'), bin('fanout'), bin('gateway')];

  const dir = tempDir(name);
  const procs = [];
  try {
    const wt = webtransport ? selfSignedCert(dir) : null;
    const redisPort = await freePort();
    const redis = new Proc(`${name}-redis`, redisServer, [
      '--port', String(redisPort), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir,
    ]);
    procs.push(redis);

    const mongoPort = await freePort();
    const mongoDir = path.join(dir, 'mongo');
    fs.mkdirSync(mongoDir);
    const mongo = new Proc(`${name}-mongo`, secantusd, [
      '--host', '127.0.0.1', '--port', String(mongoPort), '--storage-path', mongoDir,
    ]);
    procs.push(mongo);
    await waitListening(redis, redisPort);
    await waitListening(mongo, mongoPort);

    const [persisterPort, persisterMetrics] = [await freePort(), await freePort()];
    const persister = new Proc(`${name}-persister`, persisterBin, [
      '--listen', `127.0.0.1:${persisterPort}`,
      '--metrics-listen', `127.0.0.1:${persisterMetrics}`,
      '--mongodb', `mongodb://127.0.0.1:${mongoPort}/?directConnection=true`,
      '--database', `roomcast_e2e_${name.replace(/[^A-Za-z0-9_]/g, '_')}`,
    ]);
    procs.push(persister);

    const gateways = [];
    for (let i = 0; i < gatewayCount; i++) {
      const [fanoutPort, fanoutMetrics, gatewayPort, gatewayMetrics] =
        [await freePort(), await freePort(), await freePort(), await freePort()];
      const fanout = new Proc(`${name}-fanout-${i}`, fanoutBin, [
        '--listen', `127.0.0.1:${fanoutPort}`,
        '--metrics-listen', `127.0.0.1:${fanoutMetrics}`,
        '--redis', `redis://127.0.0.1:${redisPort}`,
      ]);
      procs.push(fanout);
      const gateway = new Proc(`${name}-gateway-${i}`, gatewayBin, [
        '--listen', `127.0.0.1:${gatewayPort}`,
        '--metrics-listen', `127.0.0.1:${gatewayMetrics}`,
        '--fanout', `http://127.0.0.1:${fanoutPort}`,
        '--persister', `http://127.0.0.1:${persisterPort}`,
        '--drain-seconds', '1',
        ...(wt ? ['--webtransport-cert', wt.cert, '--webtransport-key', wt.key] : []),
        ...(typeof gatewayArgs === 'function' ? gatewayArgs(i) : gatewayArgs),
      ]);
      procs.push(gateway);
      gateways.push({ proc: gateway, port: gatewayPort, url: `http://127.0.0.1:${gatewayPort}` });
    }
    await waitListening(persister, persisterPort);
    for (const g of gateways) await waitReady(g.proc, g.port);
    for (const proc of procs) proc.checkAlive('the stack was starting');

    return {
      gateways: gateways.map((g) => g.url),
      ports: gateways.map((g) => g.port),
      procs,
      stop: () => stopAll(procs, [dir]),
    };
  } catch (err) {
    await stopAll(procs, [dir]);
    throw err;
  }
}

/** The git-tracked web client the tests use (see browser.js for why). */
const PAGE_FILE = path.join(ROOT, 'web', 'index.html');

/** Whether the server at `port` serves exactly web/index.html at `/`. */
async function servesPageFile(port) {
  const res = await httpGet(port, '/');
  return !!res && res.status === 200 && res.body === fs.readFileSync(PAGE_FILE, 'utf8');
}

// A quick, explicit check for the shell script and for humans: `node lib/harness.js check`.
if (require.main === module && process.argv[2] === 'check') {
  const missing = [];
  for (const name of ['roomcast', 'gateway', 'fanout', 'persister']) {
    try { bin(name); } catch (err) { missing.push(err.message); }
  }
  try { executable(SECANTUSD, 'run scripts/setup-test-deps.sh'); } catch (err) { missing.push(err.message); }
  try { which('redis-server', 'run scripts/setup-test-deps.sh'); } catch (err) { missing.push(err.message); }
  if (missing.length) {
    console.error(missing.join('\n'));
    process.exit(1);
  }
  console.log('harness: binaries, redis-server and secantusd-py found');
}

/** How long a test waits for any one answer. */
const WAIT_MS = 20000;

/** Resolves with the args of the socket's next `event` that satisfies `pred`. */
function next(socket, event, pred = () => true) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => { socket.off(event, on); reject(new Error(`no ${event} within ${WAIT_MS} ms`)); }, WAIT_MS);
    function on(...args) {
      if (!pred(...args)) return;
      clearTimeout(timer);
      socket.off(event, on);
      resolve(args);
    }
    socket.on(event, on);
  });
}

/** Resolves once `check()` is true; fails after WAIT_MS, naming `what`. */
async function until(check, what) {
  const deadline = Date.now() + WAIT_MS;
  while (Date.now() < deadline) {
    if (check()) return;
    await sleep(50);
  }
  throw new Error(`timed out waiting for ${what}`);
}

module.exports = {
  ROOT, OUT_DIR, LOG_DIR, PAGE_FILE,
  startStandalone, startStack, selfSignedCert, servesPageFile, freePort, httpGet, sleep, bin, next, until, WAIT_MS,
};
