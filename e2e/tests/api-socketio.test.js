// The server API as Socket.IO clients see it, on the one-process `roomcast`: a posted
// message arrives like any other, a moderated one is `deleted` live and gone from the
// original app's history, and a removed user gets `kicked`, then is refused while banned.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const { startStandalone, next, WAIT_MS } = require('../lib/harness');

function connect(url, user, sockets) {
  const socket = io(url, { transports: ['websocket'], auth: { user }, reconnection: false });
  sockets.push(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${user}: no connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
    socket.once('connect_error', (err) => { clearTimeout(timer); reject(err); });
  });
}

test('the server API reaches Socket.IO clients of both styles', async (t) => {
  const server = await startStandalone('api-socketio');
  const sockets = [];
  t.after(async () => {
    for (const s of sockets) s.close();
    await server.stop();
  });
  const api = async (method, path, body) => {
    const response = await fetch(`${server.apiUrl}${path}`, {
      method,
      headers: { authorization: `apikey ${server.apiKey()}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return { status: response.status, body: await response.json() };
  };

  const ivy = await connect(server.url, 'ivy', sockets); // roomcast's events
  const jay = await connect(server.url, 'jay', sockets); // the original app's events
  await ivy.timeout(WAIT_MS).emitWithAck('join', { room: 'modroom' });
  const jayJoined = next(jay, 'joined_room');
  jay.emit('join_room', 'modroom');
  await jayJoined;

  const ivyGot = next(ivy, 'message');
  const jayGot = next(jay, 'room_message');
  const posted = await api('POST', '/api/rooms/modroom/messages', { user: 'bot', text: 'rules: be kind', idempotency_key: 'r1' });
  assert.equal(posted.status, 200, JSON.stringify(posted.body));
  assert.equal((await ivyGot)[0].text, 'rules: be kind');
  assert.equal(JSON.parse((await jayGot)[0]).message, 'rules: be kind');

  const ivyDeleted = next(ivy, 'deleted');
  const jayDeleted = next(jay, 'deleted');
  const removed = await api('DELETE', `/api/rooms/modroom/messages/${posted.body.seq}`);
  assert.equal(removed.status, 200, JSON.stringify(removed.body));
  for (const [event] of [await ivyDeleted, await jayDeleted]) {
    assert.deepEqual(event, { room: 'modroom', seq: posted.body.seq, id: posted.body.id });
  }
  const page = await ivy.timeout(WAIT_MS).emitWithAck('history', { room: 'modroom' });
  assert.deepEqual(page.messages.map((m) => [m.seq, m.text, m.deleted]), [[posted.body.seq, '', true]]);
  const rejoined = next(jay, 'joined_room');
  jay.emit('join_room', 'modroom');
  const [, history] = await rejoined;
  assert.deepEqual(JSON.parse(history), [], "the original app's history leaves a removed message out");

  const kicked = next(ivy, 'kicked');
  const gone = next(ivy, 'disconnect');
  const removal = await api('POST', '/api/users/ivy/disconnect', { reason: 'flooding', ban_seconds: 60 });
  assert.equal(removal.status, 200, JSON.stringify(removal.body));
  const [event] = await kicked;
  assert.equal(event.code, 4403);
  assert.equal(event.reason, 'flooding');
  assert.ok(event.until > Date.now() + 50_000, `until is the ban's end: ${event.until}`);
  await gone;
  await assert.rejects(connect(server.url, 'ivy', sockets), /banned: ivy is banned until .*: flooding/);
  assert.ok(jay.connected, 'other users stay');
});
