'use strict';
// The web client against the distributed stack: redis-server, secantusd-py (MongoDB wire),
// one persister, and two (fanout, gateway) pairs. "A" pages load from gateway 0 and "B"
// pages from gateway 1, so every exchange crosses gateways through Redis.

const assert = require('node:assert/strict');
const { before, after } = require('node:test');
const { startStack } = require('../lib/harness');
const {
  usePageFrom, launchBrowser, browserTest, confirmed, pending, waitFor, waitJoined, waitTexts,
  type, send, pickName, uniqueRoom, WAIT_MS,
} = require('../lib/browser');

let stack;
let browser;

before(async () => {
  stack = await startStack('dist', 2);
  await usePageFrom(stack.gateways);
  browser = await launchBrowser();
}, { timeout: 240_000 });

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
});

const it = (name, fn, opts) => browserTest('distributed', () => browser, name, fn, opts);
const gw = (i) => stack.gateways[i];

/** Strictly increasing seqs, no seq or id twice, each text once (but for `repeated`). */
function assertClean(list, who, repeated = []) {
  const seqs = list.map((m) => m.seq);
  for (let i = 1; i < seqs.length; i++) {
    assert.ok(seqs[i] > seqs[i - 1], `${who}: messages out of seq order: ${JSON.stringify(seqs)}`);
  }
  const ids = list.map((m) => m.id);
  assert.equal(new Set(ids).size, ids.length, `${who}: an id shows twice: ${JSON.stringify(ids)}`);
  assert.ok(ids.every(Boolean), `${who}: a confirmed message without data-id`);
  const texts = list.map((m) => m.text).filter((t) => !repeated.includes(t));
  assert.equal(new Set(texts).size, texts.length, `${who}: a text shows twice: ${JSON.stringify(texts)}`);
}

const strip = (list) => list.map(({ seq, id, user, text }) => ({ seq, id, user, text }));

it('two gateways: both pages pick names, join a room and exchange messages', async (s) => {
  const room = uniqueRoom('hello');
  const a = await s.open('alice-gw0', gw(0), { room });
  const b = await s.open('bob-gw1', gw(1), { room });
  // First visit: the page asks for a name.
  await pickName(a, 'alice');
  await pickName(b, 'bob');
  await waitJoined(a, room);
  await waitJoined(b, room);
  assert.equal(await a.getByTestId('room-name').textContent(), room);

  await send(a, 'hi bob, alice here');
  await waitTexts(b, ['hi bob, alice here']);
  await send(b, 'hello alice!');
  await waitTexts(a, ['hello alice!']);
  await send(a, 'see you on the other gateway');
  await waitTexts(b, ['see you on the other gateway']);

  const la = await confirmed(a);
  const lb = await confirmed(b);
  assert.deepEqual(la.map((m) => [m.user, m.text]), [
    ['alice', 'hi bob, alice here'], ['bob', 'hello alice!'], ['alice', 'see you on the other gateway'],
  ]);
  assertClean(la, 'alice');
  assert.deepEqual(strip(lb), strip(la), 'both pages show the same messages at the same seqs');
  assert.deepEqual(la.map((m) => m.own), [true, false, true], 'alice: own messages are marked own');
  assert.deepEqual(lb.map((m) => m.own), [false, true, false], 'bob: own messages are marked own');
  // Each message shows its author and time.
  const shown = await b.$$eval('[data-testid=message][data-seq]', (els) => els.map((e) => ({
    author: e.querySelector('[data-testid=message-author]').textContent,
    time: e.querySelector('[data-testid=message-time]').textContent.trim(),
  })));
  assert.deepEqual(shown.map((x) => x.author), ['alice', 'bob', 'alice']);
  assert.ok(shown.every((x) => /\d/.test(x.time)), `every message shows a time: ${JSON.stringify(shown)}`);
  assert.equal(await a.getByTestId('status').textContent(), 'Connected');
});

it('a page that reloads sees the history, and keeps its name', async (s) => {
  const room = uniqueRoom('reload');
  const a = await s.open('carol-gw0', gw(0), { room });
  await pickName(a, 'carol');
  const b = await s.open('dave-gw1', gw(1), { room, user: 'dave' });
  await waitJoined(a, room);
  await waitJoined(b, room);
  const texts = ['one', 'two', 'three', 'four'];
  for (const [i, text] of texts.entries()) await send(i % 2 ? b : a, text);
  await waitTexts(a, texts);
  const beforeReload = await confirmed(a);

  await a.reload();
  await waitJoined(a, room);
  await waitTexts(a, texts);
  assert.equal(await a.evaluate(() => document.body.dataset.user), 'carol', 'the name is remembered');
  assert.equal(await a.getByTestId('username-input').isVisible(), false, 'no name dialog after a reload');
  const afterReload = await confirmed(a);
  assert.deepEqual(strip(afterReload), strip(beforeReload));
  assert.deepEqual(afterReload.map((m) => m.own), [true, false, true, false]);
  assert.ok(await a.getByTestId('history-start').isVisible(), 'the start of the room is marked');
});

it('a page that goes offline and comes back shows what it missed exactly once, in order', async (s) => {
  const room = uniqueRoom('offline');
  const a = await s.open('erin-gw0', gw(0), { room, user: 'erin' });
  const b = await s.open('frank-gw1', gw(1), { room, user: 'frank' });
  await waitJoined(a, room);
  await waitJoined(b, room);
  await send(b, 'before the drop');
  await waitTexts(a, ['before the drop']);

  await a.context().setOffline(true);
  await waitFor(a, 'the page to notice it is offline', () => document.body.dataset.status === 'offline');
  const missed = ['while away 1', 'while away 2', 'while away 3', 'while away 4', 'while away 5'];
  for (const text of missed) await send(b, text);
  // Typed while offline: queued, shown pending, sent after the reconnect.
  await type(a, 'typed while offline');
  await waitFor(a, 'the offline message to show as pending',
    () => Array.from(document.querySelectorAll('[data-testid=message][data-pending=true]'))
      .some((e) => e.dataset.state === 'pending' && e.textContent.includes('typed while offline')));
  await s.screenshot(a, 'erin-offline');

  await a.context().setOffline(false);
  await waitJoined(a, room);
  await waitTexts(a, [...missed, 'typed while offline']);
  await waitTexts(b, ['typed while offline']);
  // A message sent after everything else: once it is here, any late duplicate would be too.
  await send(b, 'after the return');
  await waitTexts(a, ['after the return']);
  await send(a, 'erin is back');
  await waitTexts(b, ['erin is back']);

  const la = await confirmed(a);
  const lb = await confirmed(b);
  assertClean(la, 'erin');
  assertClean(lb, 'frank');
  assert.deepEqual(la.map((m) => m.text), [
    'before the drop', ...missed, 'typed while offline', 'after the return', 'erin is back',
  ]);
  assert.deepEqual(strip(lb), strip(la), 'both pages show the same messages at the same seqs');
  for (const text of missed) {
    const n = await a.locator('[data-testid=message][data-seq]', { hasText: text }).count();
    assert.equal(n, 1, `"${text}" is shown ${n} times`);
  }
  assert.deepEqual(await pending(a), [], 'nothing is left pending');
});

it('user text is shown as text: <script> and HTML are never interpreted', async (s) => {
  const room = uniqueRoom('xss');
  const a = await s.open('mallory-gw0', gw(0), { room, user: 'mallory' });
  const b = await s.open('grace-gw1', gw(1), { room, user: 'grace' });
  await waitJoined(a, room);
  await waitJoined(b, room);
  const evil = [
    '<script>alert(1)</script>',
    '<img src=x onerror="window.__pwned=1;alert(2)"> & <b>bold</b> &amp;',
    'https://example.invalid/"><script>alert(3)</script>',
  ];
  for (const text of evil) await send(a, text);
  await waitTexts(b, evil);

  const check = async (page, who) => {
    const texts = (await confirmed(page)).map((m) => m.text);
    assert.deepEqual(texts, evil, `${who}: the texts are shown exactly as typed`);
    const found = await page.evaluate(() => ({
      scripts: document.querySelectorAll('#messages script').length,
      imgs: document.querySelectorAll('#messages img, #messages b').length,
      pwned: window.__pwned === 1,
      pageScripts: document.scripts.length,
    }));
    assert.deepEqual(found, { scripts: 0, imgs: 0, pwned: false, pageScripts: 1 }, `${who}: nothing was interpreted`);
  };
  await check(a, 'mallory (sender)');
  await check(b, 'grace (live, other gateway)');
  await b.reload(); // and once more through the history path
  await waitJoined(b, room);
  await waitTexts(b, evil);
  await check(b, 'grace (history)');
  assert.deepEqual(s.dialogs, [], 'no dialog was opened');
});

it('own message: pending until acked, then confirmed by id; phone-sized layout does not scroll sideways', async (s) => {
  const room = uniqueRoom('phone');
  const me = 'heidi';
  // A WebSocket route between the page and the real gateway holds chosen server frames,
  // so the pending state can be seen, and each order of ack / broadcast can be forced.
  const gate = { acks: false, own: false, held: [], route: null };
  const release = (pred) => {
    const keep = [];
    for (const h of gate.held) (pred(h.frame) ? gate.route.send(h.raw) : keep.push(h));
    gate.held = keep;
  };
  const held = async (what, pred) => {
    const deadline = Date.now() + WAIT_MS;
    while (!gate.held.some((h) => pred(h.frame))) {
      if (Date.now() > deadline) throw new Error(`the gateway never sent ${what}`);
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    return gate.held.find((h) => pred(h.frame)).frame;
  };
  const context = await s.newContext({
    viewport: { width: 375, height: 740 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    const server = ws.connectToServer();
    gate.route = ws;
    server.onMessage((raw) => {
      let frame = null;
      try { frame = JSON.parse(String(raw)); } catch (_) { /* not JSON: pass it on */ }
      const hold = frame && ((gate.acks && frame.type === 'ack') || (gate.own && frame.type === 'message' && frame.user === me));
      if (hold) gate.held.push({ raw, frame });
      else ws.send(raw);
    });
  });
  const a = await s.open('heidi-phone-gw0', gw(0), { room, user: me, context, transport: 'websocket' });
  const b = await s.open('ivan-gw1', gw(1), { room, user: 'ivan' });
  await waitJoined(a, room);
  await waitJoined(b, room);
  await send(b, 'hi heidi, this is a phone-sized test');
  await waitTexts(a, ['hi heidi, this is a phone-sized test']);

  // 1. The ack comes before the broadcast: the pending element becomes the message.
  gate.acks = true;
  gate.own = true;
  await type(a, 'first: ack before broadcast');
  const p1 = a.locator('[data-testid=message][data-pending=true]', { hasText: 'first: ack before broadcast' });
  await p1.waitFor();
  assert.equal(await p1.getAttribute('data-state'), 'pending');
  assert.match(await p1.getByTestId('message-state').textContent(), /Sending/);
  assert.equal(await p1.evaluate((e) => e.classList.contains('pending') && e.classList.contains('own')), true);
  await s.screenshot(a, 'heidi-pending');
  const ack1 = await held('the ack of the first message', (f) => f.type === 'ack');
  await held('the broadcast of the first message', (f) => f.type === 'message' && f.id === ack1.id);
  release((f) => f.type === 'ack');
  const m1 = a.locator(`[data-testid=message][data-id="${ack1.id}"]`);
  await m1.waitFor();
  await p1.waitFor({ state: 'detached' });
  assert.equal(await m1.getAttribute('data-seq'), String(ack1.seq));
  assert.equal(await m1.evaluate((e) => e.classList.contains('own') && !e.classList.contains('pending')), true);
  assert.match(await m1.getByTestId('message-time').textContent(), /\d/);
  await s.screenshot(a, 'heidi-acked');
  release((f) => f.type === 'message'); // the late broadcast of the same id is dropped

  // 2. The broadcast comes before the ack: when the ack arrives, the pending element goes.
  gate.own = false;
  release(() => true);
  await type(a, 'second: broadcast before ack');
  const ack2 = await held('the ack of the second message', (f) => f.type === 'ack');
  await a.locator(`[data-testid=message][data-id="${ack2.id}"]`).waitFor();
  gate.acks = false;
  release(() => true);
  await a.locator('[data-testid=message][data-pending=true]').first().waitFor({ state: 'detached' });

  // 3. The same text from another tab of the same user is another message: it must not
  //    settle the pending one (only the ack, by client_id, does).
  const tab2 = await s.open('heidi-tab2-gw1', gw(1), { room, user: me });
  await waitJoined(tab2, room);
  gate.acks = true;
  gate.own = true;
  await type(a, 'same words');
  const ack3 = await held('the ack of the third message', (f) => f.type === 'ack');
  await send(tab2, 'same words');
  const fromTab2 = await held('the broadcast from the other tab', (f) => f.type === 'message' && f.id !== ack3.id);
  release((f) => f.type === 'message' && f.id === fromTab2.id);
  await a.locator(`[data-testid=message][data-id="${fromTab2.id}"]`).waitFor();
  const p3 = a.locator('[data-testid=message][data-pending=true]', { hasText: 'same words' });
  assert.equal(await p3.count(), 1, 'the pending message is still shown');
  assert.equal(await p3.getAttribute('data-state'), 'pending');
  await s.screenshot(a, 'heidi-same-text-other-tab');
  gate.acks = false;
  gate.own = false;
  release(() => true);
  await a.locator(`[data-testid=message][data-id="${ack3.id}"]`).waitFor();
  await p3.waitFor({ state: 'detached' });

  // Long unbroken text and a long URL must wrap, not widen the page.
  await send(a, `${'x'.repeat(240)} https://example.invalid/${'very-long-path/'.repeat(12)}`);
  await send(a, 'last');
  await waitTexts(b, ['first: ack before broadcast', 'second: broadcast before ack', 'same words', 'last']);

  const la = await confirmed(a);
  assertClean(la, 'heidi', ['same words']);
  assert.deepEqual(la.filter((m) => m.text === 'same words').map((m) => m.id).sort(), [ack3.id, fromTab2.id].sort());
  assert.deepEqual(strip(la), strip(await confirmed(b)), 'both pages show the same messages');
  for (const [id, seq] of [[ack1.id, ack1.seq], [ack2.id, ack2.seq], [ack3.id, ack3.seq]]) {
    assert.equal(la.filter((m) => m.id === id).length, 1, `message ${id} is shown once`);
    assert.equal(la.find((m) => m.id === id).seq, seq);
  }
  assert.deepEqual(await pending(a), []);

  const layout = await a.evaluate(() => {
    const vw = document.documentElement.clientWidth;
    const over = [];
    for (const e of document.querySelectorAll('.app *')) {
      const r = e.getBoundingClientRect();
      if (r.width && r.right > vw + 0.5 && !e.closest('.room-list')) over.push(`${e.tagName}.${e.className} right=${r.right}`);
    }
    const rect = (id) => document.querySelector(`[data-testid=${id}]`).getBoundingClientRect();
    return {
      vw,
      innerWidth: window.innerWidth,
      scrollWidth: document.documentElement.scrollWidth,
      bodyScrollWidth: document.body.scrollWidth,
      over: over.slice(0, 5),
      sendButton: rect('send-button').right <= vw && rect('send-button').bottom <= window.innerHeight,
      addToggle: getComputedStyle(document.querySelector('[data-testid=add-room-toggle]')).display !== 'none',
      sidebarOnTop: document.querySelector('.sidebar').getBoundingClientRect().bottom
        <= document.querySelector('.chat').getBoundingClientRect().top + 0.5,
    };
  });
  assert.equal(layout.innerWidth, 375);
  assert.ok(layout.scrollWidth <= layout.vw && layout.bodyScrollWidth <= layout.vw,
    `the page scrolls sideways: ${JSON.stringify(layout)}`);
  assert.deepEqual(layout.over, [], 'nothing sticks out on the right');
  assert.ok(layout.sendButton, 'the send button is on screen');
  assert.ok(layout.addToggle, 'the "+" room button is shown on a narrow screen');
  assert.ok(layout.sidebarOnTop, 'the room list is a bar above the chat');
});
