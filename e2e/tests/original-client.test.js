// The original app's client (modelled in lib/original-client.js, with its own parsing by
// class-transformer 0.5.1) against `roomcast` alone and against two gateways: its whole
// click path, and the `error` event for each malformed original event.
'use strict';

const test = require('node:test');
const assert = require('node:assert/strict');
const { startStandalone, startStack, sleep, next } = require('../lib/harness');
const { OriginalClient } = require('../lib/original-client');

/** The original server's `time`: `${hours}:${minutes}`, unpadded; roomcast's clock is UTC. */
function timeNearNow(time) {
  const now = Date.now();
  return [now - 60_000, now, now + 60_000].some((t) => {
    const d = new Date(t);
    return time === `${d.getUTCHours()}:${d.getUTCMinutes()}`;
  });
}

async function clickPath(t, urls) {
  const clients = [];
  const open = (n, user) => {
    const client = new OriginalClient(urls[n % urls.length], user);
    clients.push(client);
    return client;
  };
  t.after(() => clients.forEach((c) => c.close()));
  const suffix = `${process.pid}-${Date.now() % 100000}`;
  const [cats, dogs] = [`Cats ${suffix}`, `Dogs ${suffix}`];

  // Connect: the room map arrives.
  const ann = open(0, 'ann');
  await ann.until('the room map on connect', (c) => c.rooms !== null);

  // CREATE ROOM from no room: the server mints the id and joins ann to it.
  ann.createRoom(cats);
  await ann.until(`${cats} in the map, and ann in it`, (c) => c.roomNamed(cats) && c.roomId === c.roomNamed(cats));
  const catsId = ann.roomId;
  assert.deepEqual(ann.rooms[catsId], { roomId: catsId, name: cats, messages: [] }, "the original's entry shape");
  assert.deepEqual(ann.messages, [], 'a new room has no messages');

  // A second client (on the other gateway) finds the room in the map it got on connect.
  const ben = open(1, 'ben');
  await ben.until(`${cats} in ben's map`, (c) => c.roomNamed(cats) === catsId);
  ben.joinRoom(catsId);
  await ben.until(`ben in ${cats}`, (c) => c.roomId === catsId);

  // Messages both ways, parsed by deserialize; the sender does not get its own back.
  ann.sendMessage('hello from ann');
  await ben.until('ann\'s message', (c) => c.shown().includes('ann: hello from ann'));
  ben.sendMessage('hi ann');
  await ann.until('ben\'s message', (c) => c.shown().includes('ben: hi ann'));
  const received = ben.messages.find((m) => m.message === 'hello from ann');
  assert.deepEqual(Object.keys(received).sort(), ['message', 'time', 'username'], 'the original fields, no others');
  assert.ok(timeNearNow(received.time), `time ${received.time} is the server's H:M`);
  await sleep(300);
  assert.deepEqual(ann.shown(), ['You: hello from ann', 'ben: hi ann'], 'no echo of ann\'s own message');
  assert.deepEqual(ben.shown(), ['ann: hello from ann', 'You: hi ann']);

  // A newcomer joining from the map gets the history, parsed by deserializeArray.
  const cal = open(0, 'cal');
  await cal.until(`${cats} in cal's map`, (c) => c.roomNamed(cats) === catsId);
  cal.joinRoom(catsId);
  await cal.until('the history of Cats', (c) => c.roomId === catsId && c.messages.length === 2);
  assert.deepEqual(cal.shown(), ['ann: hello from ann', 'ben: hi ann']);

  // Creating a room while in one moves the creator: it leaves Cats.
  ann.createRoom(dogs);
  await ann.until(`ann moved to ${dogs}`, (c) => c.roomNamed(dogs) && c.roomId === c.roomNamed(dogs));
  const dogsId = ann.roomId;
  await ben.until(`${dogs} in ben's map`, (c) => c.roomNamed(dogs) === dogsId);
  ben.sendMessage('cats only');
  await cal.until('the Cats message', (c) => c.shown().includes('ben: cats only'));
  // Switching rooms from the map leaves the previous one: cal moves to Dogs.
  cal.joinRoom(dogsId);
  await cal.until(`cal in ${dogs}`, (c) => c.roomId === dogsId);
  ben.sendMessage('after cal left');
  ann.sendMessage('woof');
  await cal.until('ann\'s Dogs message', (c) => c.shown().includes('ann: woof'));
  await sleep(300);
  assert.deepEqual(ann.shown(), ['You: woof'], 'ann left Cats when it created Dogs');
  assert.deepEqual(cal.shown(), ['ann: woof'], 'cal left Cats when it joined Dogs');
  for (const c of clients) assert.deepEqual(c.errors, [], `${c.username}'s handlers never threw`);
  for (const c of clients) assert.deepEqual(c.serverErrors, [], `${c.username} got no error event`);
}

/** Each malformed original event gets the `error` event, and the socket keeps working. */
async function malformed(t, url) {
  const eve = new OriginalClient(url, 'eve');
  t.after(() => eve.close());
  await eve.until('the room map', (c) => c.rooms !== null);
  const cases = [
    ['create_room', [{}], 'bad_request'],
    ['create_room', [{ roomName: 'x'.repeat(65) }], 'bad_request'],
    ['create_room', ['not an object'], 'bad_request'],
    ['send_message', [{ roomId: 'nowhere', message: 'hi', username: 'eve' }], 'not_joined'],
    ['join_room', [null], 'bad_request'],
  ];
  for (const [event, args, code] of cases) {
    const error = next(eve.socket, 'error');
    eve.socket.emit(event, ...args);
    const [body] = await error;
    assert.equal(body.code, code, `${event}(${JSON.stringify(args)}): ${JSON.stringify(body)}`);
    assert.ok(body.message, 'the error says what was wrong');
  }
  eve.createRoom(`Eve ${process.pid}`);
  await eve.until('the room eve created', (c) => c.roomId !== '');
  const error = next(eve.socket, 'error');
  eve.socket.emit('send_message', { roomId: eve.roomId, message: 42, username: 'eve' });
  assert.equal((await error)[0].code, 'bad_request', 'a non-string message');
  assert.deepEqual(eve.errors, []);
}

test('the original client against roomcast alone', async (t) => {
  const server = await startStandalone('original-client');
  t.after(() => server.stop());
  await t.test('the click path', (tt) => clickPath(tt, [server.url]));
  await t.test('malformed events get the error event', (tt) => malformed(tt, server.url));
});

test('the original client against two gateways', async (t) => {
  const stack = await startStack('original-client', 2);
  t.after(() => stack.stop());
  await t.test('the click path across gateways', (tt) => clickPath(tt, stack.gateways));
  await t.test('malformed events get the error event', (tt) => malformed(tt, stack.gateways[1]));
});
