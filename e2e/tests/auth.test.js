// The front door of a standalone `roomcast`, with socket.io-client and `ws`: JWT auth
// (--auth-jwt-secret, --auth-required), the tokens' users and rooms claims, the origin
// allow-list (--allowed-origins), and the per-connection event rate (--frames-per-second,
// --frame-burst). Tokens are minted by `roomcast token`, except the expired one, which is
// signed here (HS256) so that no test waits for a token to expire.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { execFileSync } = require('node:child_process');
const { io } = require('socket.io-client');
const WebSocket = require('ws');
const { startStandalone, sleep, bin, httpGet, next, until, WAIT_MS } = require('../lib/harness');

const SECRET = 'e2e-auth-secret-0123456789abcdef-0123456789';
const OTHER_SECRET = 'another-secret-not-the-servers-0123456789';
const ALLOWED = 'http://allowed.test';

/** `roomcast token --user USER [--rooms ROOMS] --secret SECRET`: the printed JWT. */
function mint(user, { rooms, ttl, secret = SECRET } = {}) {
  const args = ['token', '--user', user, '--secret', secret];
  if (rooms) args.push('--rooms', rooms);
  if (ttl) args.push('--ttl', ttl);
  const env = { ...process.env };
  delete env.ROOMCAST_AUTH_JWT_SECRET;
  const token = execFileSync(bin('roomcast'), args, { env, encoding: 'utf8' }).trim();
  assert.match(token, /^[\w-]+\.[\w-]+\.[\w-]+$/, `roomcast token printed a JWT: ${token}`);
  return token;
}

/** An HS256 JWT with these claims, signed here. */
function sign(claims, secret = SECRET) {
  const part = (value) => Buffer.from(JSON.stringify(value)).toString('base64url');
  const unsigned = `${part({ alg: 'HS256', typ: 'JWT' })}.${part(claims)}`;
  return `${unsigned}.${crypto.createHmac('sha256', secret).update(unsigned).digest('base64url')}`;
}

const nowSeconds = () => Math.floor(Date.now() / 1000);

/** A Socket.IO client that does not retry by itself; `opts` go to io(). */
function client(url, opts = {}) {
  return io(url, { transports: ['websocket'], reconnection: false, forceNew: true, ...opts });
}

/** Resolves with the connected socket; rejects on connect_error, with its message. */
function connect(url, opts, sockets) {
  const socket = client(url, opts);
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      reject(new Error(`connect_error instead of connect: ${err.message}`));
    });
  });
}

/** Resolves with the connect_error's Error; fails if the connection is accepted. */
function refusal(url, opts, sockets) {
  const socket = client(url, opts);
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`neither connect nor connect_error within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.close();
      reject(new Error('connected, but the connection should have been refused'));
    });
    socket.once('connect_error', (err) => { clearTimeout(timer); socket.close(); resolve(err); });
  });
}

const ack = (socket, event, payload) => socket.timeout(WAIT_MS).emitWithAck(event, payload);
/** A `join` ack without its `presence` (presence is tested in socketio-presence.test.js). */
const withoutPresence = ({ presence: _presence, ...rest }) => rest;

/** The HTTP answer to a /ws upgrade that is refused: { status, body }. */
function wsRefusal(url, headers = {}) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { headers });
    const timer = setTimeout(() => { ws.terminate(); reject(new Error(`no answer to ${url} within ${WAIT_MS} ms`)); }, WAIT_MS);
    ws.once('open', () => { clearTimeout(timer); ws.close(); reject(new Error(`${url} was upgraded; it should be refused`)); });
    ws.once('unexpected-response', (req, res) => {
      const chunks = [];
      res.on('data', (c) => chunks.push(c));
      res.on('end', () => {
        clearTimeout(timer);
        req.destroy();
        resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') });
      });
    });
    ws.once('error', (err) => {
      // After 'unexpected-response' ws may also report an error; only a first one counts.
      if (ws.readyState === WebSocket.CONNECTING) return;
      clearTimeout(timer);
      reject(err);
    });
  });
}

/** An open /ws connection that records every frame it gets. */
async function wsOpen(url) {
  const ws = new WebSocket(url);
  const frames = [];
  ws.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    ws.once('open', resolve);
    ws.once('error', reject);
    ws.once('unexpected-response', (_req, res) => reject(new Error(`${url}: HTTP ${res.statusCode}`)));
  });
  return { ws, frames, send: (frame) => ws.send(JSON.stringify(frame)) };
}

/** The samples of `name` in the server's /metrics: [{ labels, value }]. */
async function samples(server, name) {
  const res = await httpGet(server.metricsPort, '/metrics');
  assert.ok(res && res.status === 200, `GET /metrics: ${res && res.status}`);
  const found = [];
  for (const line of res.body.split('\n')) {
    const m = line.match(/^(\w+)(?:\{(.*)\})? (\S+)$/);
    if (m && m[1] === name) found.push({ labels: m[2] || '', value: Number(m[3]) });
  }
  return found;
}

const total = (list) => list.reduce((sum, s) => sum + s.value, 0);

/** Connections the server holds now: connects minus disconnects, every protocol. */
async function openConnections(server) {
  return total(await samples(server, 'roomcast_gateway_connects_total'))
    - total(await samples(server, 'roomcast_gateway_disconnects_total'));
}

/**
 * Closes every client, then waits (at most WAIT_MS) until the server has seen them go: a
 * long-polling client's close is an HTTP request, which a server already draining would
 * not accept, and its session would hold the drain open.
 */
async function closeAll(server, sockets, wss) {
  for (const s of sockets) s.close();
  for (const ws of wss) ws.terminate();
  const deadline = Date.now() + WAIT_MS;
  let open;
  while ((open = await openConnections(server)) > 0 && Date.now() < deadline) await sleep(50);
  if (open > 0) console.error(`auth.test.js: the server still counts ${open} open connections`);
}

test('tokens, rooms claims and origins (--auth-required)', async (t) => {
  const server = await startStandalone('auth', [
    '--auth-jwt-secret', SECRET, '--auth-required', '--allowed-origins', ALLOWED,
  ]);
  const sockets = [];
  const wss = [];
  t.after(async () => {
    await closeAll(server, sockets, wss);
    await server.stop();
  });
  const wsUrl = (query) => `${server.url.replace('http', 'ws')}/ws?${query}`;

  await t.test('no token: connect_error token_missing', async () => {
    const err = await refusal(server.url, { auth: { user: 'nobody' } }, sockets);
    assert.match(err.message, /^token_missing: /);
    const empty = await refusal(server.url, { auth: { token: '' } }, sockets);
    assert.match(empty.message, /^token_missing: /, 'an empty token is no token');
  });

  await t.test('a token signed with another secret: connect_error token_invalid', async () => {
    const err = await refusal(server.url, { auth: { token: mint('alice', { secret: OTHER_SECRET }) } }, sockets);
    assert.match(err.message, /^token_invalid: /);
    const garbage = await refusal(server.url, { auth: { token: 'not.a.jwt' } }, sockets);
    assert.match(garbage.message, /^token_invalid: /);
  });

  await t.test('an expired token: connect_error token_expired', async () => {
    // The same claims with a future exp connect, so the refusal is about exp alone.
    await connect(server.url, { auth: { token: sign({ sub: 'carol', exp: nowSeconds() + 600 }) } }, sockets);
    const err = await refusal(server.url, { auth: { token: sign({ sub: 'carol', exp: nowSeconds() - 60 }) } }, sockets);
    assert.match(err.message, /^token_expired: /);
  });

  await t.test("a valid token connects, and messages carry the token's user", async () => {
    // The payload's user (and send_message's username) cannot override the token's.
    const alice = await connect(server.url, { auth: { token: mint('alice'), user: 'mallory' } }, sockets);
    const bob = await connect(server.url, { query: { token: mint('bob') } }, sockets); // ?token= works too

    // The original app's events.
    const aliceJoined = next(alice, 'joined_room');
    alice.emit('join_room', 'auth-original');
    const bobJoined = next(bob, 'joined_room');
    bob.emit('join_room', 'auth-original');
    await aliceJoined;
    await bobJoined;
    const received = next(bob, 'room_message');
    const stored = await ack(alice, 'send_message', { roomId: 'auth-original', message: 'hi, I am mallory', username: 'mallory' });
    assert.ok(!stored.error, `send_message was acked: ${JSON.stringify(stored)}`);
    const msg = JSON.parse((await received)[0]); // the original's payloads are JSON strings
    assert.equal(msg.message, 'hi, I am mallory');
    assert.equal(msg.username, 'alice', "the token's sub, not the payload's username");
    const dave = await connect(server.url, { auth: { token: mint('dave') } }, sockets);
    const daveJoined = next(dave, 'joined_room');
    dave.emit('join_room', 'auth-original');
    const history = JSON.parse((await daveJoined)[1]);
    assert.deepEqual(history.map((m) => [m.username, m.message]), [['alice', 'hi, I am mallory']], 'stored as alice');

    // roomcast's events.
    assert.deepEqual(withoutPresence(await ack(bob, 'join', { room: 'auth-acks' })), { room: 'auth-acks', messages: [], truncated: false });
    assert.equal((await ack(alice, 'join', { room: 'auth-acks' })).room, 'auth-acks');
    const live = next(bob, 'message', (m) => m.room === 'auth-acks');
    const sent = await ack(alice, 'send', { room: 'auth-acks', text: 'from the token', client_id: 'a1' });
    assert.equal(sent.client_id, 'a1');
    assert.ok(sent.seq >= 1 && sent.id, `send was acked: ${JSON.stringify(sent)}`);
    const [message] = await live;
    assert.equal(message.user, 'alice');
    assert.equal(message.text, 'from the token');
  });

  await t.test('a rooms claim limits join, join_room and history: forbidden_room', async () => {
    const erin = await connect(server.url, { auth: { token: mint('erin', { rooms: 'team-*' }) } }, sockets);
    assert.deepEqual(withoutPresence(await ack(erin, 'join', { room: 'team-red' })), { room: 'team-red', messages: [], truncated: false });
    const joined = await ack(erin, 'join', { room: 'admin' });
    assert.equal(joined.error?.code, 'forbidden_room', `join admin: ${JSON.stringify(joined)}`);
    const history = await ack(erin, 'history', { room: 'admin' });
    assert.equal(history.error?.code, 'forbidden_room', `history admin: ${JSON.stringify(history)}`);
    assert.deepEqual(await ack(erin, 'history', { room: 'team-blue' }), { room: 'team-blue', messages: [] });

    const refused = next(erin, 'error');
    erin.emit('join_room', 'admin');
    const [error] = await refused;
    assert.equal(error.code, 'forbidden_room', `join_room admin: ${JSON.stringify(error)}`);
    const teamJoined = next(erin, 'joined_room');
    erin.emit('join_room', 'team-green');
    assert.equal((await teamJoined)[0], 'team-green');

    // Sending to a room the claim does not grant is forbidden_room, on every front door
    // (docs/PROTOCOL.md, "Where /ws and Socket.IO used to disagree"), with its client_id.
    const send = await ack(erin, 'send', { room: 'admin', text: 'x', client_id: 'e1' });
    assert.equal(send.error?.code, 'forbidden_room', `send admin: ${JSON.stringify(send)}`);
    assert.equal(send.client_id, 'e1');
    // The original send_message is held to the claim too, and needs a join_room first.
    const original = await ack(erin, 'send_message', { roomId: 'admin', message: 'sneaky', username: 'erin' });
    assert.equal(original.error?.code, 'forbidden_room', `send_message admin: ${JSON.stringify(original)}`);
    const unjoined = await ack(erin, 'send_message', { roomId: 'team-blue', message: 'x', username: 'erin' });
    assert.equal(unjoined.error?.code, 'not_joined', `send_message team-blue: ${JSON.stringify(unjoined)}`);
    const page = await ack(erin, 'history', { room: 'admin' });
    assert.equal(page.error?.code, 'forbidden_room', 'nothing reached admin');
  });

  await t.test('a rooms claim also limits what the directory and the room map show', async () => {
    const frank = await connect(server.url, { auth: { token: mint('frank') } }, sockets);
    assert.equal((await ack(frank, 'join', { room: 'admin' })).room, 'admin');
    assert.equal((await ack(frank, 'join', { room: 'team-dir' })).room, 'team-dir');
    // A room created by frank (a ULID id, outside team-*) reaches frank's map, not erin's.
    const erin = await connect(server.url, { auth: { token: mint('erin', { rooms: 'team-*' }) } }, sockets);
    const erinMaps = [];
    erin.on('room', (map) => erinMaps.push(map));
    const frankMap = next(frank, 'room', (map) => Object.values(map).some((r) => r.name === 'Secret plans'));
    const created = await ack(frank, 'create_room', { roomName: 'Secret plans' });
    assert.ok(created.roomId, JSON.stringify(created));
    assert.ok((await frankMap)[0][created.roomId], "the creator's map has the room");
    // Joined rooms enter the directory as their room task starts: wait for both.
    let listed;
    for (const deadline = Date.now() + WAIT_MS; Date.now() < deadline; await sleep(100)) {
      listed = await ack(frank, 'rooms', { limit: 100 });
      if (['admin', 'team-dir', created.roomId].every((room) => listed.rooms?.some((r) => r.room === room))) break;
    }
    for (const room of ['admin', 'team-dir', created.roomId]) {
      assert.ok(listed.rooms.some((r) => r.room === room), `${room} in frank's directory: ${JSON.stringify(listed)}`);
    }
    const seen = await ack(erin, 'rooms', { limit: 100 });
    const rooms = seen.rooms.map((r) => r.room);
    assert.ok(rooms.includes('team-dir'), `a granted room is listed: ${JSON.stringify(seen)}`);
    assert.deepEqual(rooms.filter((r) => !r.startsWith('team-')), [], `nothing outside team-*: ${JSON.stringify(seen)}`);
    assert.ok(erinMaps.length >= 1, 'erin got the room map');
    for (const map of erinMaps) {
      assert.deepEqual(Object.keys(map).filter((r) => !r.startsWith('team-')), [], `erin's map: ${JSON.stringify(map)}`);
    }
  });

  await t.test('a token whose sub is not a usable name is refused, never replaced by a claimed one', async () => {
    for (const claims of [{ sub: 'ann@example.com' }, { name: 'auth0|123' }, {}]) {
      const token = sign({ ...claims, exp: nowSeconds() + 600 });
      const bad = await refusal(server.url, { auth: { token, user: 'mallory' } }, sockets);
      assert.match(bad.message, /^token_invalid: /, `${JSON.stringify(claims)}: ${bad.message}`);
    }
  });

  await t.test('a Socket.IO message over --max-frame-bytes does not get through', async () => {
    const hugo = await connect(server.url, { auth: { token: mint('hugo') } }, sockets);
    await ack(hugo, 'join', { room: 'team-big' });
    const closed = next(hugo, 'disconnect');
    hugo.emit('send', { room: 'team-big', text: 'x'.repeat(64 * 1024), client_id: 'big' });
    const [reason] = await closed;
    assert.ok(reason, `the connection was closed (${reason})`);
    const other = await connect(server.url, { auth: { token: mint('ivy') } }, sockets);
    const page = await ack(other, 'history', { room: 'team-big' });
    assert.deepEqual(page.messages, [], 'nothing was stored');
  });

  await t.test('an Origin outside --allowed-origins: connect_error origin_not_allowed', async () => {
    const token = mint('frank');
    for (const transports of [['websocket'], ['polling']]) {
      const bad = await refusal(server.url, { transports, auth: { token }, extraHeaders: { Origin: 'http://evil.test' } }, sockets);
      assert.match(bad.message, /^origin_not_allowed: /, `${transports}: ${bad.message}`);
      const good = await connect(server.url, { transports, auth: { token }, extraHeaders: { Origin: ALLOWED } }, sockets);
      assert.equal((await ack(good, 'join', { room: 'team-origin' })).room, 'team-origin', `${transports}: the allowed origin works`);
    }
    // The origin is checked before the token.
    const first = await refusal(server.url, { extraHeaders: { Origin: 'http://evil.test' } }, sockets);
    assert.match(first.message, /^origin_not_allowed: /);
  });

  await t.test('/ws: refused upgrades answer with the code; a token names the user', async () => {
    const invalid = await wsRefusal(wsUrl(`token=${mint('gina', { secret: OTHER_SECRET })}`));
    assert.equal(invalid.status, 401);
    assert.match(invalid.body, /^token_invalid: /);
    const missing = await wsRefusal(wsUrl('user=gina'));
    assert.equal(missing.status, 401);
    assert.match(missing.body, /^token_missing: /);
    const expired = await wsRefusal(wsUrl(`token=${sign({ sub: 'gina', exp: nowSeconds() - 60 })}`));
    assert.equal(expired.status, 401);
    assert.match(expired.body, /^token_expired: /);
    const origin = await wsRefusal(wsUrl(`token=${mint('gina')}`), { Origin: 'http://evil.test' });
    assert.equal(origin.status, 403);
    assert.match(origin.body, /^origin_not_allowed: /);

    const gina = await wsOpen(wsUrl(`token=${mint('gina', { rooms: 'team-*' })}&user=mallory`));
    wss.push(gina.ws);
    gina.send({ type: 'join', room: 'admin' });
    await until(() => gina.frames.some((f) => f.type === 'error'), 'an error frame for join admin');
    const error = gina.frames.find((f) => f.type === 'error');
    assert.equal(error.code, 'forbidden_room', JSON.stringify(error));
    gina.send({ type: 'join', room: 'team-ws' });
    await until(() => gina.frames.some((f) => f.type === 'joined' && f.room === 'team-ws'), 'joined team-ws');
    gina.send({ type: 'send', room: 'team-ws', text: 'from ws', client_id: 'g1' });
    await until(() => gina.frames.some((f) => f.type === 'message' && f.room === 'team-ws'), 'the message back');
    assert.equal(gina.frames.find((f) => f.type === 'message').user, 'gina', "the token's sub, not ?user=");
  });

  await t.test('refusals are counted by reason in /metrics', async () => {
    const refused = await samples(server, 'roomcast_gateway_refused_connections_total');
    const count = (reason) => total(refused.filter((s) => s.labels.includes(`reason="${reason}"`)));
    for (const reason of ['token_missing', 'token_invalid', 'token_expired', 'origin_not_allowed']) {
      assert.ok(count(reason) >= 1, `${reason}: ${JSON.stringify(refused)}`);
    }
    assert.equal(count('server_full') + count('too_many_connections'), 0);
  });
});

/** Repeats `attempt` (at most WAIT_MS) while its answer is a rate_limited refusal. */
async function unlimited(attempt) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    const answer = await attempt();
    const code = answer.error?.code ?? answer.code;
    if (code !== 'rate_limited' || Date.now() > deadline) return answer;
    await sleep(250);
  }
}

test('Socket.IO: an expiring token is refreshed, or the socket gets token_expired and is disconnected', async (t) => {
  const server = await startStandalone('auth-refresh', [
    '--auth-jwt-secret', SECRET, '--auth-required', '--auth-refresh-grace-seconds', '2',
  ]);
  const sockets = [];
  t.after(async () => {
    await closeAll(server, sockets, []);
    await server.stop();
  });
  // A room outside ada's first grant, in the room map (the directory).
  const cy = await connect(server.url, { auth: { token: sign({ sub: 'cy', exp: nowSeconds() + 600 }) } }, sockets);
  const { roomId } = await ack(cy, 'create_room', { roomName: 'Open plans' });
  assert.ok(roomId, 'cy created a room');

  const soon = nowSeconds() + 3;
  const ada = await connect(server.url, { auth: { token: sign({ sub: 'ada', exp: soon, rooms: ['team-*'] }) } }, sockets);
  const bo = await connect(server.url, { auth: { token: sign({ sub: 'bo', exp: soon }) } }, sockets);
  const boAsked = next(bo, 'refresh_needed');
  const boExpired = next(bo, 'token_expired');
  const boGone = new Promise((resolve) => bo.once('disconnect', resolve));

  const [asked] = await next(ada, 'refresh_needed');
  assert.equal(asked.grace_seconds, 2, JSON.stringify(asked));
  const exp = nowSeconds() + 3600;
  // The new token grants every room: the room map now shows cy's room at once.
  const wider = next(ada, 'room', (map) => roomId in map);
  assert.deepEqual(await ack(ada, 'refresh', { token: sign({ sub: 'ada', exp }) }), { exp, left: [] });
  await wider;
  const other = await ack(ada, 'refresh', { token: sign({ sub: 'mallory', exp }) });
  assert.equal(other.error?.code, 'token_invalid', JSON.stringify(other));

  await boAsked;
  const [expired] = await boExpired;
  assert.equal(expired.code, 4401, JSON.stringify(expired));
  assert.equal(await boGone, 'io server disconnect');
  // Past the old token's exp and grace, the refreshed socket still works.
  await sleep(2500);
  assert.equal((await ack(ada, 'join', { room: 'after-refresh' })).room, 'after-refresh');
});

test('events over --frames-per-second are refused with rate_limited', async (t) => {
  const server = await startStandalone('auth-rate', ['--frames-per-second', '2', '--frame-burst', '2']);
  const sockets = [];
  const wss = [];
  t.after(async () => {
    await closeAll(server, sockets, wss);
    await server.stop();
  });

  await t.test('Socket.IO: acks carry rate_limited, and the connection carries on', async () => {
    const rita = await connect(server.url, { auth: { user: 'rita' } }, sockets);
    const id = rita.id;
    const disconnects = [];
    rita.on('disconnect', (reason) => disconnects.push(reason));

    const answers = await Promise.all(Array.from({ length: 10 }, () => ack(rita, 'history', { room: 'rate', limit: 5 })));
    const limited = answers.filter((a) => a.error?.code === 'rate_limited');
    const pages = answers.filter((a) => !a.error);
    assert.ok(limited.length >= 1, `some of 10 quick events are rate_limited: ${JSON.stringify(answers)}`);
    assert.match(limited[0].error.message, /frames per second/);
    assert.ok(pages.length >= 1, `the burst is answered: ${JSON.stringify(answers)}`);
    assert.equal(limited.length + pages.length, 10, `only pages and rate_limited: ${JSON.stringify(answers)}`);
    assert.deepEqual(pages[0], { room: 'rate', messages: [] });

    // Below the rate again, the same connection works.
    assert.deepEqual(await unlimited(() => ack(rita, 'history', { room: 'rate', limit: 5 })), { room: 'rate', messages: [] });
    assert.equal((await unlimited(() => ack(rita, 'join', { room: 'rate' }))).room, 'rate');
    const sent = await unlimited(() => ack(rita, 'send', { room: 'rate', text: 'still here', client_id: 'r1' }));
    assert.ok(sent.seq >= 1, `send after the burst: ${JSON.stringify(sent)}`);
    assert.ok(rita.connected, 'still connected');
    assert.equal(rita.id, id, 'the same session, not a reconnect');
    assert.deepEqual(disconnects, []);

    // A send refused as rate_limited is answered with its client_id, so the client knows
    // which one to resend; every send gets exactly one answer.
    const burst = await Promise.all(
      Array.from({ length: 6 }, (_, n) => ack(rita, 'send', { room: 'rate', text: `burst ${n}`, client_id: `rb${n}` })),
    );
    assert.deepEqual(burst.map((a) => a.client_id), ['rb0', 'rb1', 'rb2', 'rb3', 'rb4', 'rb5'], JSON.stringify(burst));
    assert.ok(burst.some((a) => a.error?.code === 'rate_limited'), `some are rate_limited: ${JSON.stringify(burst)}`);
  });

  await t.test('/ws: error frames carry rate_limited, and the connection carries on', async () => {
    const sam = await wsOpen(`${server.url.replace('http', 'ws')}/ws?user=sam`);
    wss.push(sam.ws);
    for (let n = 0; n < 10; n++) sam.send({ type: 'history', room: 'rate-ws', limit: 5 });
    await until(() => sam.frames.length === 10, '10 answers');
    const limited = sam.frames.filter((f) => f.type === 'error' && f.code === 'rate_limited');
    const pages = sam.frames.filter((f) => f.type === 'history');
    assert.ok(limited.length >= 1 && pages.length >= 1, JSON.stringify(sam.frames));
    assert.equal(limited.length + pages.length, 10, JSON.stringify(sam.frames));

    // Below the rate again, the same connection works.
    const answer = await unlimited(async () => {
      sam.frames.length = 0;
      sam.send({ type: 'history', room: 'rate-ws', limit: 5 });
      await until(() => sam.frames.length === 1, 'an answer to history');
      return sam.frames[0];
    });
    assert.deepEqual(answer, { type: 'history', room: 'rate-ws', messages: [] });
    assert.equal(sam.ws.readyState, WebSocket.OPEN);

    // Refused sends carry their client_id, rate_limited included: one answer per send.
    await unlimited(async () => {
      sam.frames.length = 0;
      sam.send({ type: 'join', room: 'rate-ws' });
      await until(() => sam.frames.length === 1, 'an answer to join');
      return sam.frames[0].type === 'joined' ? sam.frames[0] : { error: { code: sam.frames[0].code } };
    });
    sam.frames.length = 0;
    for (let n = 0; n < 6; n++) sam.send({ type: 'send', room: 'rate-ws', text: `burst ${n}`, client_id: `sb${n}` });
    await until(() => sam.frames.filter((f) => f.type === 'ack' || f.type === 'error').length === 6, '6 answers');
    const answers = sam.frames.filter((f) => f.type === 'ack' || f.type === 'error');
    assert.deepEqual(answers.map((f) => f.client_id).sort(), ['sb0', 'sb1', 'sb2', 'sb3', 'sb4', 'sb5'], JSON.stringify(answers));
    assert.ok(answers.some((f) => f.code === 'rate_limited'), `some are rate_limited: ${JSON.stringify(answers)}`);
  });
});
