'use strict';
// The web client against the one-process `roomcast` binary (in-memory broker, on-disk
// store in a temp dir).

const assert = require('node:assert/strict');
const { before, after } = require('node:test');
const { startStandalone } = require('../lib/harness');
const {
  usePageFrom, launchBrowser, browserTest, confirmed, pending, waitJoined, waitTexts, send, uniqueRoom, WAIT_MS,
} = require('../lib/browser');

let server;
let browser;

before(async () => {
  server = await startStandalone('standalone');
  await usePageFrom([server.url]);
  browser = await launchBrowser();
}, { timeout: 120_000 });

after(async () => {
  if (browser) await browser.close();
  if (server) await server.stop();
});

browserTest('standalone', () => browser, 'standalone: two tabs can talk', async (s) => {
  const room = uniqueRoom('tabs');
  const context = await s.newContext();
  // Two tabs of one browser (one context: shared localStorage), each with its own name.
  const ann = await s.open('ann-tab', server.url, { room, user: 'ann', context });
  const bob = await s.open('bob-tab', server.url, { room, user: 'bob', context });
  await waitJoined(ann, room);
  await waitJoined(bob, room);

  await send(ann, 'hi from tab one');
  await waitTexts(bob, ['hi from tab one']);
  await send(bob, 'hi back from tab two');
  await waitTexts(ann, ['hi back from tab two']);
  await send(ann, 'bye');
  await waitTexts(bob, ['bye']);

  const la = await confirmed(ann);
  const lb = await confirmed(bob);
  assert.deepEqual(la.map((m) => [m.user, m.text]), [['ann', 'hi from tab one'], ['bob', 'hi back from tab two'], ['ann', 'bye']]);
  assert.deepEqual(lb.map(({ seq, id, text }) => ({ seq, id, text })), la.map(({ seq, id, text }) => ({ seq, id, text })));
  assert.ok(la[0].seq < la[1].seq && la[1].seq < la[2].seq, 'seqs increase');
  assert.deepEqual(la.map((m) => m.own), [true, false, true]);
  assert.deepEqual(lb.map((m) => m.own), [false, true, false]);
  assert.deepEqual(await pending(ann), []);
  assert.deepEqual(await pending(bob), []);
});

browserTest('standalone', () => browser, 'standalone: the page follows left, truncated joins and room errors', async (s) => {
  const room = uniqueRoom('frames');
  const other = uniqueRoom('other');
  // Between the page and the real server: record what the page sends, and inject frames
  // the server would send in rarer situations.
  const sent = [];
  let toPage = null;
  const context = await s.newContext();
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    const server = ws.connectToServer();
    toPage = ws;
    ws.onMessage((raw) => {
      try { sent.push(JSON.parse(String(raw))); } catch (_) { sent.push(String(raw)); }
      server.send(raw);
    });
  });
  const inject = (frame) => toPage.send(JSON.stringify(frame));
  const waitSent = async (what, pred, from = 0) => {
    const deadline = Date.now() + WAIT_MS;
    while (!sent.slice(from).some(pred)) {
      if (Date.now() > deadline) throw new Error(`the page never sent ${what}; it sent ${JSON.stringify(sent.slice(from))}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  };
  // roomcast offers WebTransport too: this page is held to WebSocket, the transport routed here.
  const kim = await s.open('kim', server.url, { room, user: 'kim', context, transport: 'websocket' });
  await waitJoined(kim, room);
  await send(kim, 'one');
  await send(kim, 'two');
  const [, second] = await confirmed(kim);

  // A "left" the page did not ask for: it joins again, from the last seq it has.
  let mark = sent.length;
  inject({ type: 'left', room });
  await waitSent('a re-join after an unexpected left', (f) => f.type === 'join' && f.room === room && f.since === second.seq, mark);
  await waitJoined(kim, room);

  // Switching rooms: the server's "left" answers the page's own leave and changes nothing.
  mark = sent.length;
  await kim.evaluate((r) => { location.hash = `#${r}`; }, other);
  await waitJoined(kim, other);
  await waitSent('the leave', (f) => f.type === 'leave' && f.room === room, mark);
  await send(kim, 'in the other room');
  assert.equal(sent.slice(mark).filter((f) => f.type === 'join' && f.room === room).length, 0,
    'no re-join of the room the page left');
  await kim.evaluate((r) => { location.hash = `#${r}`; }, room);
  await waitJoined(kim, room);
  await waitTexts(kim, ['one', 'two']);

  // An error about another room is not shown; one about this room is.
  inject({ type: 'error', code: 'unavailable', message: 'about another room', room: other });
  inject({ type: 'error', code: 'unavailable', message: 'about this room', room });
  const toast = kim.getByTestId('toast');
  await toast.waitFor({ state: 'visible' });
  assert.equal(await toast.textContent(), 'about this room');

  // A truncated recovery: the page joins again from the end of that page, then is joined.
  mark = sent.length;
  const end = second.seq + 1000;
  inject({
    type: 'joined', room, truncated: true,
    messages: [{ room, seq: end, id: 'injected-1', user: 'ghost', text: 'end of a truncated page', ts: Date.now() }],
  });
  await waitSent('a join from the end of the truncated page', (f) => f.type === 'join' && f.room === room && f.since === end, mark);
  await waitJoined(kim, room);
  await waitTexts(kim, ['end of a truncated page']);
  assert.deepEqual(await pending(kim), []);
});

browserTest('standalone', () => browser, 'standalone: a moderated message shows as removed and a removed user stays out', async (s) => {
  const room = uniqueRoom('moderated');
  const api = async (method, path, body) => {
    const response = await fetch(`${server.apiUrl}${path}`, {
      method,
      headers: { authorization: `apikey ${server.apiKey()}`, 'content-type': 'application/json' },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    assert.equal(response.status, 200, `${method} ${path}: ${await response.clone().text()}`);
    return response.json();
  };
  const lou = await s.open('lou', server.url, { room, user: 'lou' });
  await waitJoined(lou, room);
  const posted = await api('POST', `/api/rooms/${room}/messages`, { user: 'bot', text: 'spam spam spam' });
  await send(lou, 'a keeper');
  await waitTexts(lou, ['spam spam spam', 'a keeper']);
  await api('DELETE', `/api/rooms/${room}/messages/${posted.seq}`);
  await lou.waitForFunction((seq) => {
    const li = document.querySelector(`[data-testid=message][data-seq="${seq}"]`);
    return li && li.dataset.deleted === 'true';
  }, posted.seq, { timeout: WAIT_MS });
  const shown = await confirmed(lou);
  assert.deepEqual(shown.map((m) => m.text), ['Message removed by a moderator', 'a keeper']);
  // Removed by the server: the page goes offline and does not come back by itself.
  await api('POST', '/api/users/lou/disconnect', { reason: 'test' });
  await lou.waitForFunction(() => document.body.dataset.status === 'offline', null, { timeout: WAIT_MS });
  await new Promise((resolve) => setTimeout(resolve, 3000));
  assert.equal(await lou.evaluate(() => document.body.dataset.status), 'offline', 'no reconnect after a removal');
});
