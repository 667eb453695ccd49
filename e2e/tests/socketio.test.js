// socket.io-client (npm) against the real gateways: roomcast's acknowledged events (the
// original app's events are in original-client.test.js), recovery after a forced disconnect, and a room
// shared by Socket.IO and /ws clients.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const WebSocket = require('ws');
const { startStack, sleep, next, until, WAIT_MS } = require('../lib/harness');


function connect(url, user) {
  const socket = io(url, { transports: ['websocket'], auth: { user }, reconnectionDelay: 200, reconnectionDelayMax: 1000 });
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${user}: no connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
  });
}

function collect(socket, event) {
  const seen = [];
  socket.on(event, (value) => seen.push(value));
  return seen;
}

test('Socket.IO against two gateways', async (t) => {
  const stack = await startStack('socketio', 2);
  const sockets = [];
  t.after(async () => {
    for (const s of sockets) s.close();
    await stack.stop();
  });
  const open = async (gateway, user) => {
    const s = await connect(stack.gateways[gateway], user);
    sockets.push(s);
    return s;
  };

  await t.test("roomcast's events answer with acks", async () => {
    const eve = await open(0, 'eve');
    const joined = await eve.timeout(WAIT_MS).emitWithAck('join', { room: 'acks' });
    // (the ack's `presence` is checked in socketio-presence.test.js)
    const { presence: _presence, ...rest } = joined;
    assert.deepEqual(rest, { room: 'acks', messages: [], truncated: false });
    const ack = await eve.timeout(WAIT_MS).emitWithAck('send', { room: 'acks', text: 'one', client_id: 'e1' });
    assert.equal(ack.client_id, 'e1');
    assert.equal(ack.seq, 1);
    assert.ok(ack.id && ack.ts > 0);
    const again = await eve.timeout(WAIT_MS).emitWithAck('send', { room: 'acks', text: 'one', client_id: 'e1' });
    assert.equal(again.id, ack.id, 'a resend with the same client_id is stored once');
    const bad = await eve.timeout(WAIT_MS).emitWithAck('send', { room: 'acks' });
    assert.equal(bad.error.code, 'bad_request');
    const notJoined = await eve.timeout(WAIT_MS).emitWithAck('send', { room: 'other', text: 'x', client_id: 'e2' });
    assert.equal(notJoined.error.code, 'not_joined');
    const page = await eve.timeout(WAIT_MS).emitWithAck('history', { room: 'acks', limit: 10 });
    assert.deepEqual(page.messages.map((m) => m.text), ['one']);

    // 12 sends emitted back to back (under the burst limit) are stored in the order they were emitted, for both
    // styles of event (the handlers run in arrival order).
    const burst = await Promise.all(Array.from({ length: 12 }, (_, n) =>
      eve.timeout(WAIT_MS).emitWithAck('send', { room: 'acks', text: `burst ${n}`, client_id: `burst${n}` })));
    const seqs = burst.map((a) => a.seq);
    assert.ok(seqs.every(Number.isInteger), `every send acked with a seq: ${seqs}`);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `acked seqs in emit order: ${seqs}`);
    await eve.timeout(WAIT_MS).emitWithAck('join', { room: 'original-order' });
    eve.emit('join_room', 'original-order');
    const originals = await Promise.all(Array.from({ length: 12 }, (_, n) =>
      eve.timeout(WAIT_MS).emitWithAck('send_message', { roomId: 'original-order', message: `m ${n}`, username: 'eve' })));
    const oseqs = originals.map((a) => a.seq);
    assert.ok(oseqs.every(Number.isInteger), `every send_message acked with a seq: ${oseqs}`);
    assert.deepEqual(oseqs, [...oseqs].sort((a, b) => a - b), `send_message seqs in emit order: ${oseqs}`);
  });

  await t.test('a forced disconnect recovers exactly what was missed', async () => {
    const fay = await open(0, 'fay');
    const gus = await open(1, 'gus');
    await fay.timeout(WAIT_MS).emitWithAck('join', { room: 'recovery' });
    await gus.timeout(WAIT_MS).emitWithAck('join', { room: 'recovery' });
    const live = collect(gus, 'message');
    for (let n = 0; n < 3; n++) await fay.timeout(WAIT_MS).emitWithAck('send', { room: 'recovery', text: `before ${n}`, client_id: `b${n}` });
    await until(() => live.length === 3, '3 live messages');
    const last = live[live.length - 1].seq;

    // Cut gus's transport; the client reconnects by itself.
    const reconnected = next(gus, 'connect');
    gus.io.engine.close();
    for (let n = 0; n < 5; n++) await fay.timeout(WAIT_MS).emitWithAck('send', { room: 'recovery', text: `missed ${n}`, client_id: `m${n}` });
    await reconnected;
    const recovered = await gus.timeout(WAIT_MS).emitWithAck('join', { room: 'recovery', since: last });
    assert.deepEqual(recovered.messages.map((m) => m.text), [0, 1, 2, 3, 4].map((n) => `missed ${n}`));
    await fay.timeout(WAIT_MS).emitWithAck('send', { room: 'recovery', text: 'after', client_id: 'a0' });
    await until(() => live.some((m) => m.text === 'after'), 'the live message after recovery');
    await sleep(300);
    const texts = live.map((m) => m.text);
    assert.deepEqual(texts, ['before 0', 'before 1', 'before 2', 'after'], 'no duplicates after recovery');
  });

  await t.test('Socket.IO and /ws clients share a room and its order', async () => {
    const hal = await open(0, 'hal');
    await hal.timeout(WAIT_MS).emitWithAck('join', { room: 'mixed' });
    const sioSeen = collect(hal, 'message');
    const ws = new WebSocket(`${stack.gateways[1].replace('http', 'ws')}/ws?user=ivy`);
    const wsSeen = [];
    const wsJoined = new Promise((resolve) => {
      ws.on('message', (data) => {
        const frame = JSON.parse(data.toString());
        if (frame.type === 'joined') resolve();
        if (frame.type === 'message') wsSeen.push(frame);
      });
    });
    await new Promise((resolve) => ws.once('open', resolve));
    ws.send(JSON.stringify({ type: 'join', room: 'mixed' }));
    await wsJoined;
    for (let n = 0; n < 10; n++) {
      ws.send(JSON.stringify({ type: 'send', room: 'mixed', text: `ws ${n}`, client_id: `w${n}` }));
      hal.emit('send', { room: 'mixed', text: `sio ${n}`, client_id: `s${n}` });
    }
    await until(() => sioSeen.length === 20 && wsSeen.length === 20, '20 messages on both sides');
    await sleep(300);
    const order = (list) => list.map((m) => `${m.seq}:${m.id}`);
    assert.deepEqual(order(sioSeen), order(wsSeen), 'the same messages in the same order');
    assert.ok(sioSeen.every((m, i) => i === 0 || m.seq > sioSeen[i - 1].seq), 'strictly increasing seq');
    ws.close();
  });
});
