// Presence, typing and the room directory (issue #15) through socket.io-client (npm) and
// /ws against the real gateways: roomcast's events `presence`, `typing` and `rooms` with
// their acks, the `presence` in `join`'s ack, `presence_diff` pushed to members, `typing`
// relayed to the other users only, and the refusals. Then, on a `roomcast` with a list
// threshold of 2, the count-only diffs above it and the full list pushed again below it.
// The original app's events are tested in socketio.test.js and original-client.test.js.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { io } = require('socket.io-client');
const WebSocket = require('ws');
const { startStack, startStandalone, sleep, until, WAIT_MS } = require('../lib/harness');

function connect(url, user) {
  const options = { transports: ['websocket'], reconnection: false };
  if (user) options.auth = { user };
  const socket = io(url, options);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${user || 'anonymous'}: no connect within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once('connect', () => { clearTimeout(timer); resolve(socket); });
    socket.once('connect_error', (err) => { clearTimeout(timer); reject(err); });
  });
}

function collect(socket, event) {
  const seen = [];
  socket.on(event, (value) => seen.push(value));
  return seen;
}

const ack = (socket, event, payload) => socket.timeout(WAIT_MS).emitWithAck(event, payload);
const users = (members) => (members || []).map((m) => m.user).sort();
const diffUsers = (diffs, kind) => diffs.flatMap((d) => (d[kind] || []).map((m) => m.user));

/**
 * A presence snapshot as the spec shapes it: a count, and the members (user, joined_at)
 * unless the count is over the list threshold. (It is what the room's members were last
 * told, so a `join`'s snapshot may not list the joiner yet: the next diff does.)
 */
function assertSnapshot(p, what, listMax = 100) {
  assert.ok(p && Number.isInteger(p.count) && p.count >= 0, `${what}: a count: ${JSON.stringify(p)}`);
  if (p.count > listMax) {
    assert.equal(p.members, undefined, `${what}: no list over the threshold: ${JSON.stringify(p)}`);
    return;
  }
  assert.ok(Array.isArray(p.members) && p.members.length === p.count, `${what}: the list of ${p.count}: ${JSON.stringify(p)}`);
  for (const m of p.members) {
    assert.ok(typeof m.user === 'string' && Number.isInteger(m.joined_at) && m.joined_at > 0,
      `${what}: each member is {user, joined_at (ms)}: ${JSON.stringify(m)}`);
  }
}

/** Asks `presence` until `check(answer)` holds (presence travels between gateways). */
async function presenceUntil(socket, room, check, what) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  for (;;) {
    last = await ack(socket, 'presence', { room });
    if (check(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last presence answer ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

/** Asks `rooms` until `check(answer)` holds. */
async function roomsUntil(socket, payload, check, what) {
  const deadline = Date.now() + WAIT_MS;
  let last;
  for (;;) {
    last = await ack(socket, 'rooms', payload);
    if (check(last)) return last;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}; last rooms answer ${JSON.stringify(last)}`);
    await sleep(100);
  }
}

/** A /ws client: { frames, send, waitFor(pred, what), close }. */
async function wsClient(base, user) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws?user=${encodeURIComponent(user)}`);
  const frames = [];
  ws.on('message', (data) => frames.push(JSON.parse(String(data))));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  return {
    frames,
    send: (frame) => ws.send(JSON.stringify(frame)),
    async waitFor(pred, what, from = 0) {
      await until(() => frames.slice(from).some(pred), `${user}: ${what} (got ${JSON.stringify(frames.slice(-8))})`);
      return frames.slice(from).find(pred);
    },
    close: () => ws.close(),
  };
}

test('presence, typing and the directory over Socket.IO and /ws, two gateways', async (t) => {
  const stack = await startStack('sio-presence', 2);
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
  const room = `sio-presence-${process.pid}`;
  const elsewhere = `sio-elsewhere-${process.pid}`;
  let amy, ben, ben2, anon;
  let amyDiffs, amyTyping, benTyping, ben2Typing;

  await t.test("join's ack and presence list the members", async () => {
    amy = await open(0, 'amy');
    amyDiffs = collect(amy, 'presence_diff');
    amyTyping = collect(amy, 'typing');
    const joined = await ack(amy, 'join', { room });
    assert.equal(joined.room, room);
    assert.deepEqual(joined.messages, []);
    assertSnapshot(joined.presence, 'the join ack\'s presence');
    assert.ok(joined.presence.count <= 1 && users(joined.presence.members).every((u) => u === 'amy'), JSON.stringify(joined.presence));
    const answer = await presenceUntil(amy, room, (p) => p.count === 1, 'amy in the presence of her room');
    assert.equal(answer.room, room);
    assertSnapshot(answer, 'presence');
    assert.deepEqual(users(answer.members), ['amy']);
  });

  await t.test('a second user joining on the other gateway is pushed as presence_diff', async () => {
    ben = await open(1, 'ben');
    benTyping = collect(ben, 'typing');
    const joined = await ack(ben, 'join', { room });
    assertSnapshot(joined.presence, 'ben\'s join ack\'s presence');
    await until(() => diffUsers(amyDiffs, 'joins').includes('ben'), 'a presence_diff with ben joining');
    const diff = amyDiffs.find((d) => (d.joins || []).some((m) => m.user === 'ben'));
    assert.equal(diff.room, room);
    assert.equal(diff.count, 2);
    assert.ok(Number.isInteger(diff.joins.find((m) => m.user === 'ben').joined_at));
    assert.deepEqual(diff.leaves || [], [], 'nobody left');
    const seen = await presenceUntil(ben, room, (p) => p.count === 2, 'ben to see both');
    assert.deepEqual(users(seen.members), ['amy', 'ben']);
  });

  await t.test('users, not connections: a second connection of a user, and one without a user, do not count', async () => {
    ben2 = await open(0, 'ben'); // ben again, on the other gateway
    ben2Typing = collect(ben2, 'typing');
    const joined = await ack(ben2, 'join', { room });
    assertSnapshot(joined.presence, 'the join ack\'s presence');
    assert.equal(joined.presence.count, 2, `ben twice is one member: ${JSON.stringify(joined.presence)}`);
    assert.deepEqual(users(joined.presence.members), ['amy', 'ben']);
    anon = await open(1, null); // listens without a name
    const listened = await ack(anon, 'join', { room });
    assert.equal(listened.presence.count, 2, `a connection without a user is not a member: ${JSON.stringify(listened.presence)}`);
    const answer = await ack(amy, 'presence', { room });
    assert.equal(answer.count, 2);
    assert.deepEqual(users(answer.members), ['amy', 'ben']);
    // The directory counts distinct users too.
    const listed = await roomsUntil(amy, {}, (r) => r.rooms.some((x) => x.room === room && x.members === 2), `${room} with 2 members`);
    const entry = listed.rooms.find((x) => x.room === room);
    assert.equal(entry.name, room, 'a room joined by id is named by its id');
    assert.ok(Number.isInteger(entry.active_at) && entry.active_at > 0);
  });

  await t.test('typing is relayed to the other users only, on both gateways', async () => {
    assert.deepEqual(await ack(ben, 'typing', { room }), { room });
    await until(() => amyTyping.some((x) => x.user === 'ben'), 'amy to get ben typing');
    assert.deepEqual(amyTyping.find((x) => x.user === 'ben'), { room, user: 'ben' });
    // A later notice from amy reaches both of ben's connections; by then, a notice of ben's
    // own would have reached them too.
    assert.deepEqual(await ack(amy, 'typing', { room }), { room });
    await until(() => benTyping.some((x) => x.user === 'amy') && ben2Typing.some((x) => x.user === 'amy'),
      'both of ben\'s connections to get amy typing');
    await sleep(300);
    assert.deepEqual(benTyping.filter((x) => x.user === 'ben'), [], 'ben is not told he is typing');
    assert.deepEqual(ben2Typing.filter((x) => x.user === 'ben'), [], 'nor is his other connection');
    assert.deepEqual(amyTyping.filter((x) => x.user === 'amy'), [], 'nor is amy');
  });

  await t.test('typing notices beyond one a second are dropped silently', async () => {
    await sleep(1100); // past the one-a-second window of the notice above
    const before = amyTyping.length;
    const answers = await Promise.all(Array.from({ length: 5 }, () => ack(ben, 'typing', { room })));
    assert.deepEqual(answers, Array(5).fill({ room }), 'each is answered, relayed or not');
    await until(() => amyTyping.length > before, 'amy to get one of them');
    await sleep(500);
    const got = amyTyping.length - before;
    assert.ok(got >= 1 && got <= 2, `5 notices within a moment are relayed at most once a second (amy got ${got})`);
  });

  await t.test('refusals: a room not joined, an invalid room, typing without a user', async () => {
    const notJoined = await ack(amy, 'presence', { room: elsewhere });
    assert.equal(notJoined.error?.code, 'not_joined', JSON.stringify(notJoined));
    assert.ok(notJoined.error.message);
    const typingNotJoined = await ack(amy, 'typing', { room: elsewhere });
    assert.equal(typingNotJoined.error?.code, 'not_joined', JSON.stringify(typingNotJoined));
    const invalid = await ack(amy, 'presence', { room: 'not a room!' });
    assert.equal(invalid.error?.code, 'invalid_room', JSON.stringify(invalid));
    const nameless = await ack(anon, 'typing', { room });
    assert.equal(nameless.error?.code, 'invalid_user', JSON.stringify(nameless));
    // The connection keeps working.
    assert.equal((await ack(amy, 'presence', { room })).count, 2);
  });

  await t.test('/ws: presence, typing and rooms frames, and their refusals', async () => {
    const cat = await wsClient(stack.gateways[1], 'cat');
    try {
      cat.send({ type: 'join', room });
      const joined = await cat.waitFor((f) => f.type === 'joined' && f.room === room, 'joined');
      assertSnapshot(joined.presence, 'joined\'s presence');
      await until(() => diffUsers(amyDiffs, 'joins').includes('cat'), 'amy to get cat\'s join');
      await until(() => cat.frames.some((f) => f.type === 'presence_diff' && (f.joins || []).some((m) => m.user === 'cat'))
        || users(joined.presence.members).includes('cat'), 'cat to be told of her own join');
      let mark = cat.frames.length;
      cat.send({ type: 'presence', room });
      const p = await cat.waitFor((f) => f.type === 'presence', 'a presence answer', mark);
      assert.equal(p.room, room);
      assertSnapshot(p, 'the presence answer');
      assert.deepEqual(users(p.members), ['amy', 'ben', 'cat'], JSON.stringify(p));

      mark = cat.frames.length;
      const amyBefore = amyTyping.length;
      cat.send({ type: 'typing', room });
      await until(() => amyTyping.slice(amyBefore).some((x) => x.user === 'cat'), 'amy to get cat typing');
      await ack(amy, 'typing', { room });
      const relayed = await cat.waitFor((f) => f.type === 'typing', 'a typing frame', mark);
      assert.deepEqual(relayed, { type: 'typing', room, user: 'amy' });
      assert.equal(cat.frames.slice(mark).filter((f) => f.type === 'typing' && f.user === 'cat').length, 0,
        'cat is not told she is typing');
      assert.equal(cat.frames.slice(mark).filter((f) => f.type === 'error').length, 0, 'typing has no answer on success');

      mark = cat.frames.length;
      cat.send({ type: 'rooms', limit: 100 });
      const listed = await cat.waitFor((f) => f.type === 'rooms', 'a rooms answer', mark);
      assert.ok(listed.rooms.some((r) => r.room === room), JSON.stringify(listed));
      assert.ok(Number.isInteger(listed.total) && listed.total >= listed.rooms.length);

      for (const type of ['presence', 'typing']) {
        mark = cat.frames.length;
        cat.send({ type, room: elsewhere });
        const error = await cat.waitFor((f) => f.type === 'error', `the error for ${type} of a room not joined`, mark);
        assert.equal(error.code, 'not_joined', JSON.stringify(error));
      }
      cat.send({ type: 'leave', room });
      await cat.waitFor((f) => f.type === 'left', 'left');
    } finally {
      cat.close();
    }
  });

  await t.test('rooms: most recently active first, paged, and rooms made with create_room by name', async () => {
    const cara = await open(1, 'cara');
    const name = `Presence lounge ${process.pid}`;
    const created = await ack(cara, 'create_room', { roomName: name });
    assert.ok(created.roomId, JSON.stringify(created));
    // Listed on the other gateway, under its name.
    const listed = await roomsUntil(amy, { limit: 100 },
      (r) => r.rooms.some((x) => x.room === created.roomId), `${name} in the directory of gateway 0`);
    assert.equal(listed.rooms.find((x) => x.room === created.roomId).name, name);
    const times = listed.rooms.map((x) => x.active_at);
    assert.deepEqual(times, [...times].sort((a, b) => b - a), `most recently active first: ${JSON.stringify(listed.rooms)}`);
    assert.ok(listed.total >= 2, JSON.stringify(listed));
    // Pages.
    const first = await ack(amy, 'rooms', { limit: 1 });
    assert.equal(first.rooms.length, 1);
    assert.equal(first.next, 1, `the next page starts at 1: ${JSON.stringify(first)}`);
    const second = await ack(amy, 'rooms', { offset: first.next, limit: 1 });
    assert.equal(second.rooms.length, 1);
    assert.notEqual(second.rooms[0].room, first.rooms[0].room);
    const past = await ack(amy, 'rooms', { offset: first.total });
    assert.deepEqual(past.rooms, []);
    assert.equal(past.next, undefined, 'no next page after the last');
    const whole = await ack(amy, 'rooms', {});
    assert.ok(whole.rooms.length <= 50, 'the default page is 50 rooms at most');
    assert.equal(whole.next === undefined, whole.total <= 50);
  });

  await t.test('a leave is pushed once the last connection of the user has left (after the grace)', async () => {
    assert.deepEqual(await ack(ben2, 'leave', { room }), { room });
    assert.deepEqual(await ack(ben, 'leave', { room }), { room });
    await until(() => diffUsers(amyDiffs, 'leaves').includes('ben'), 'a presence_diff with ben leaving');
    const diff = amyDiffs.find((d) => (d.leaves || []).some((m) => m.user === 'ben'));
    assert.equal(diff.room, room);
    assert.equal(diff.count, 1, JSON.stringify(diff));
    const answer = await ack(amy, 'presence', { room });
    assert.deepEqual(users(answer.members), ['amy']);
  });
});

test('over the list threshold: count-only diffs, and the full list pushed again below it', async (t) => {
  const server = await startStandalone('sio-threshold', ['--presence-list-max', '2']);
  const sockets = [];
  t.after(async () => {
    for (const s of sockets) s.close();
    await server.stop();
  });
  const open = async (user) => {
    const s = await connect(server.url, user);
    sockets.push(s);
    return s;
  };
  const room = `sio-threshold-${process.pid}`;
  const u1 = await open('uno');
  const diffs = collect(u1, 'presence_diff');
  const pushed = collect(u1, 'presence');
  await ack(u1, 'join', { room });
  const u2 = await open('dos');
  await ack(u2, 'join', { room });
  await until(() => diffs.some((d) => d.count === 2), 'the diff of the second member');
  assert.deepEqual(diffUsers(diffs, 'joins').filter((u) => u !== 'uno'), ['dos'], 'at the threshold, diffs still list users');

  const u3 = await open('tres');
  const over = await ack(u3, 'join', { room });
  assertSnapshot(over.presence, 'the join ack\'s presence', 2);
  await until(() => diffs.some((d) => d.count === 3), 'the count-only diff');
  const countOnly = diffs.find((d) => d.count === 3);
  assert.deepEqual(countOnly, { room, count: 3 }, 'only the count over the threshold');
  const answer = await ack(u1, 'presence', { room });
  assert.deepEqual(answer, { room, count: 3 }, 'no list over the threshold');
  await presenceUntil(u3, room, (p) => p.count === 3, 'tres to be told the count');
  assert.deepEqual(await ack(u3, 'presence', { room }), { room, count: 3 });

  // Back to the threshold: the whole list is pushed, unasked.
  await ack(u3, 'leave', { room });
  await until(() => pushed.some((p) => p.count === 2), 'the full list pushed after the count fell back');
  const full = pushed.find((p) => p.count === 2);
  assert.equal(full.room, room);
  assert.deepEqual(users(full.members), ['dos', 'uno']);
});
