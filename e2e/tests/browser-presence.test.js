'use strict';
// Presence, typing, the room directory and unread badges in the web client (issue #15),
// against the distributed stack: redis-server, secantusd-py, one persister and two
// (fanout, gateway) pairs. Pages named "-gw0" load from gateway 0 and "-gw1" from gateway 1.
// Also: the phone-sized layout (375x667) and keyboard-only use.
//
// Every wait is for a condition in the page (30 s limit, see lib/browser.js); a leave is
// seen after the server's leave grace (3 s) and its 250 ms batching, well inside that.

const assert = require('node:assert/strict');
const { before, after } = require('node:test');
const WebSocket = require('ws');
const { io } = require('socket.io-client');
const { startStack, sleep } = require('../lib/harness');
const {
  usePageFrom, launchBrowser, browserTest, waitFor, waitJoined, waitTexts, send, uniqueRoom,
  members, waitMembers, typingText, WAIT_MS,
} = require('../lib/browser');

let stack;
let browser;

before(async () => {
  stack = await startStack('presence', 2);
  await usePageFrom(stack.gateways);
  browser = await launchBrowser();
}, { timeout: 240_000 });

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
});

const it = (name, fn, opts) => browserTest('presence', () => browser, name, fn, opts);
const gw = (i) => stack.gateways[i];

/** Waits until the typing line reads `text` exactly (the page ends it with "…"). */
function waitTyping(page, text) {
  return waitFor(page, `the typing line to read ${JSON.stringify(text)}`,
    (want) => document.querySelector('[data-testid=typing-text]').textContent.trim() === want, text);
}

/** Waits until nobody is shown typing. */
function waitNoTyping(page) {
  return waitFor(page, 'the typing line to clear',
    () => document.querySelector('[data-testid=typing-text]').textContent.trim() === '');
}

/**
 * Types into each of `typers`' message boxes, one key each round, until `watcher` shows
 * `text` (the page sends at most one typing notice every 2 s, so one key may not be enough).
 */
async function typeUntil(typers, watcher, text) {
  const deadline = Date.now() + WAIT_MS;
  for (;;) {
    for (const page of typers) await page.getByTestId('send-box').press('x');
    const shown = await typingText(watcher);
    if (shown === text) return;
    if (Date.now() > deadline) throw new Error(`the typing line never read ${JSON.stringify(text)}; it reads ${JSON.stringify(shown)}`);
    await sleep(250);
  }
}

/** A /ws client of the node `ws` package: { frames, send(obj), waitFor(pred, what), close() }. */
async function wsClient(base, user) {
  const ws = new WebSocket(`${base.replace('http', 'ws')}/ws?user=${encodeURIComponent(user)}`);
  const frames = [];
  ws.on('message', (data) => frames.push(JSON.parse(String(data))));
  await new Promise((resolve, reject) => { ws.once('open', resolve); ws.once('error', reject); });
  const client = {
    frames,
    send: (frame) => ws.send(JSON.stringify(frame)),
    async waitFor(pred, what) {
      const deadline = Date.now() + WAIT_MS;
      for (;;) {
        const found = frames.find(pred);
        if (found) return found;
        if (Date.now() > deadline) throw new Error(`${user}: no ${what} within ${WAIT_MS / 1000}s; got ${JSON.stringify(frames.slice(-10))}`);
        await sleep(50);
      }
    },
    close: () => ws.close(),
  };
  return client;
}

/**
 * Opens the directory dialog and clicks Refresh until `room` is listed (with `members`
 * members, if given).
 */
async function waitInDirectory(page, room, what, members = null) {
  const dialog = page.getByTestId('directory-dialog');
  if (!(await dialog.isVisible())) await page.getByTestId('directory-open').click();
  await dialog.waitFor({ state: 'visible' });
  const item = page.locator(`[data-testid=directory-item][data-room="${room}"]`);
  const listed = async () => (await item.count())
    && (members === null || (await item.getAttribute('data-members')) === String(members));
  const deadline = Date.now() + WAIT_MS;
  while (!(await listed())) {
    if (Date.now() > deadline) {
      const shown = await page.$$eval('[data-testid=directory-item]', (els) => els.map((e) => [e.dataset.room, e.dataset.members]));
      throw new Error(`${what} never showed in the directory${members === null ? '' : ` with ${members} members`}; `
        + `it lists ${JSON.stringify(shown)}`);
    }
    await page.getByTestId('directory-refresh').click();
    await sleep(300);
  }
  return item;
}

it('member list and typing across two gateways: joins, typing, leaves', async (s) => {
  const room = uniqueRoom('presence');
  const ada = await s.open('ada-gw0', gw(0), { room, user: 'ada' });
  const bo = await s.open('bo-gw0', gw(0), { room, user: 'bo' });
  await waitJoined(ada, room);
  await waitJoined(bo, room);

  // Each sees both, sorted, with an online dot; the header shows the count.
  await waitMembers(ada, ['ada', 'bo']);
  await waitMembers(bo, ['ada', 'bo']);
  assert.deepEqual(await members(ada), ['ada', 'bo'], 'sorted by name');
  assert.equal(await ada.getByTestId('members-toggle-count').textContent(), '2');
  assert.equal(await ada.locator('[data-testid=member][data-user=ada] .online-dot').count(), 1, 'an online dot');
  assert.match(await ada.locator('[data-testid=member][data-user=ada]').textContent(), /\(you\)/);
  assert.ok(await ada.getByTestId('member-panel').isVisible(), 'on a wide screen the member list is shown');

  // Typing: shown to the other user, never to the typist, and gone ~5 s after the last notice.
  await ada.getByTestId('send-box').pressSequentially('hello', { delay: 30 });
  await waitTyping(bo, 'ada is typing…');
  const shownAt = Date.now();
  assert.equal(await typingText(ada), '', 'nobody is shown typing to the typist');
  await waitNoTyping(bo);
  const shownFor = Date.now() - shownAt;
  assert.ok(shownFor >= 3000, `the typing line stays about 5 s after the last notice (was ${shownFor} ms)`);

  // A user's message clears their typing at once.
  await typeUntil([ada], bo, 'ada is typing…');
  const text = await ada.getByTestId('send-box').inputValue();
  await ada.getByTestId('send-box').press('Enter');
  await waitTexts(bo, [text]);
  assert.equal(await typingText(bo), '', 'the message cleared ada\'s typing');

  // A third page on the other gateway sees both, and both see it.
  const cy = await s.open('cy-gw1', gw(1), { room, user: 'cy' });
  await waitJoined(cy, room);
  await waitMembers(cy, ['ada', 'bo', 'cy']);
  await waitMembers(ada, ['ada', 'bo', 'cy']);
  await waitMembers(bo, ['ada', 'bo', 'cy']);
  assert.deepEqual(await members(cy), ['ada', 'bo', 'cy']);

  // Two typists, across gateways.
  await typeUntil([ada, bo], cy, 'ada and bo are typing…');
  await waitNoTyping(cy);

  // bo closes the page: after the leave grace, the others no longer list bo.
  await bo.close();
  await waitMembers(ada, ['ada', 'cy'], 'bo to leave ada\'s member list (after the leave grace)');
  await waitMembers(cy, ['ada', 'cy'], 'bo to leave cy\'s member list (after the leave grace)');
  assert.equal(await cy.getByTestId('members-toggle-count').textContent(), '2');
});

it('the directory on one gateway lists rooms made on the other, with member counts', async (s) => {
  const room = uniqueRoom('lobby');
  const made = uniqueRoom('made-on-gw0');
  const dee = await s.open('dee-gw0', gw(0), { room, user: 'dee' });
  const eli = await s.open('eli-gw1', gw(1), { room, user: 'eli' });
  await waitJoined(dee, room);
  await waitJoined(eli, room);

  // dee creates a room with the page's own form (a join by name) on gateway 0.
  await dee.getByTestId('new-room-input').fill(made);
  await dee.getByTestId('new-room-submit').click();
  await waitJoined(dee, made);
  await waitMembers(dee, ['dee']);

  // eli, on gateway 1, finds it in the directory, with dee in it.
  const item = await waitInDirectory(eli, made, `#${made}`, 1);
  assert.match(await item.getByTestId('directory-members').textContent(), /^1 online$/);

  // A room made with Socket.IO's create_room on gateway 0 is listed by its name.
  const sio = io(gw(0), { transports: ['websocket'], auth: { user: 'fay' } });
  try {
    const name = `Made with Socket.IO ${process.pid}`;
    const { roomId } = await sio.timeout(WAIT_MS).emitWithAck('create_room', { roomName: name });
    assert.ok(roomId, 'create_room answers the new id');
    const created = await waitInDirectory(eli, roomId, `"${name}"`);
    assert.equal(await created.getByTestId('directory-name').textContent(), name);
  } finally {
    sio.close();
  }

  // Picking a room in the directory joins it and adds it to the user's own list.
  await eli.locator(`[data-testid=directory-item][data-room="${made}"]`).click();
  assert.equal(await eli.getByTestId('directory-dialog').isVisible(), false, 'the dialog closes');
  await waitJoined(eli, made);
  await waitMembers(eli, ['dee', 'eli']);
  await waitMembers(dee, ['dee', 'eli']);
  assert.equal(await eli.locator(`[data-testid=room-item][data-room="${made}"]`).count(), 1, 'in eli\'s room list');
  // The user's own list (localStorage) holds what eli chose, nothing from the directory.
  const saved = await eli.evaluate(() => JSON.parse(localStorage.getItem('roomcast.rooms')));
  assert.deepEqual(saved.filter((r) => r !== 'general'), [room, made]);
});

it('unread badges for the other rooms of the list', async (s) => {
  const quiet = uniqueRoom('unread-quiet');
  const busy = uniqueRoom('unread-busy');
  const gil = await s.open('gil-gw1', gw(1), { room: busy, user: 'gil' });
  await waitJoined(gil, busy);
  await send(gil, 'seen before leaving');
  // Switch to the other room (by the URL hash): busy stays in gil's list.
  await gil.evaluate((r) => { location.hash = `#${r}`; }, quiet);
  await waitJoined(gil, quiet);

  // Someone else writes in busy, on the other gateway.
  const hal = await wsClient(gw(0), 'hal');
  try {
    hal.send({ type: 'join', room: busy });
    await hal.waitFor((f) => f.type === 'joined' && f.room === busy, 'joined');
    for (const n of [1, 2]) {
      hal.send({ type: 'send', room: busy, text: `while gil was away ${n}`, client_id: `hal-${n}` });
      await hal.waitFor((f) => f.type === 'ack' && f.client_id === `hal-${n}`, `the ack of message ${n}`);
    }
  } finally {
    hal.close();
  }

  // Opening the directory checks the list's rooms (so does its 30 s refresh).
  const badge = gil.locator(`li[data-room="${busy}"] [data-testid=unread-badge]`);
  await gil.getByTestId('directory-open').click();
  const deadline = Date.now() + WAIT_MS;
  while ((await gil.locator(`li[data-room="${busy}"]`).getAttribute('data-unread')) !== '2') {
    if (Date.now() > deadline) throw new Error(`no unread count 2 for #${busy}: ${await gil.locator(`li[data-room="${busy}"]`).getAttribute('data-unread')}`);
    await gil.getByTestId('directory-refresh').click();
    await sleep(300);
  }
  // Escape closes the dialog and gives the focus back to its button.
  await gil.keyboard.press('Escape');
  await gil.getByTestId('directory-dialog').waitFor({ state: 'hidden' });
  assert.equal(await gil.evaluate(() => document.activeElement.dataset.testid), 'directory-open');
  assert.ok(await badge.isVisible());
  assert.equal(await badge.textContent(), '2');
  assert.match(await gil.locator(`[data-testid=room-item][data-room="${busy}"]`).getAttribute('aria-label'), /2 unread/);
  assert.equal(await gil.locator(`li[data-room="${quiet}"]`).getAttribute('data-unread'), '0', 'the open room has no badge');

  // Opening the room shows the messages and clears the badge.
  await gil.locator(`[data-testid=room-item][data-room="${busy}"]`).click();
  await waitJoined(gil, busy);
  await waitTexts(gil, ['seen before leaving', 'while gil was away 1', 'while gil was away 2']);
  assert.equal(await badge.isVisible(), false);
});

it('phone-sized (375x667): member list behind a toggle, no sideways scroll', async (s) => {
  const room = uniqueRoom('phone-presence');
  const context = await s.newContext({
    viewport: { width: 375, height: 667 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  const ivy = await s.open('ivy-phone-gw0', gw(0), { room, user: 'ivy', context });
  const jo = await s.open('jo-gw1', gw(1), { room, user: 'jo' });
  await waitJoined(ivy, room);
  await waitJoined(jo, room);
  await waitMembers(ivy, ['ivy', 'jo']);
  await send(jo, 'hello from a wide screen');
  await waitTexts(ivy, ['hello from a wide screen']);
  await send(ivy, 'hi from a phone');
  await typeUntil([jo], ivy, 'jo is typing…');

  const toggle = ivy.getByTestId('members-toggle');
  assert.equal(await ivy.getByTestId('member-panel').isVisible(), false, 'the member list starts collapsed');
  assert.ok(await toggle.isVisible(), 'its toggle is shown');
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');
  assert.equal(await ivy.getByTestId('members-toggle-count').textContent(), '2');
  await s.screenshot(ivy, 'phone-375x667');

  const layout = () => ivy.evaluate(() => {
    const vw = window.innerWidth, vh = window.innerHeight;
    const box = (id) => {
      const r = document.querySelector(`[data-testid=${id}]`).getBoundingClientRect();
      return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, width: r.width, height: r.height };
    };
    return {
      vw, vh,
      scrollWidth: document.documentElement.scrollWidth,
      bodyScrollWidth: document.body.scrollWidth,
      composer: box('composer'),
      list: box('message-list'),
      typing: box('typing'),
      panel: box('member-panel'),
    };
  });
  let l = await layout();
  assert.equal(l.vw, 375);
  assert.ok(l.scrollWidth <= l.vw && l.bodyScrollWidth <= l.vw, `the page scrolls sideways: ${JSON.stringify(l)}`);
  assert.ok(await ivy.getByTestId('composer').isVisible() && await ivy.getByTestId('message-list').isVisible());
  assert.ok(l.composer.bottom <= l.vh + 0.5 && l.composer.top >= 0 && l.composer.right <= l.vw + 0.5,
    `the composer is on screen: ${JSON.stringify(l.composer)}`);
  assert.ok(l.list.height > 0 && l.list.top < l.composer.top, `the message list is above the composer: ${JSON.stringify(l)}`);
  assert.ok(l.typing.bottom <= l.composer.top + 0.5 && l.typing.right <= l.vw + 0.5, 'the typing line sits above the composer');

  // The toggle opens the list over the chat, inside the screen; Escape closes it.
  await toggle.click();
  await ivy.getByTestId('member-panel').waitFor({ state: 'visible' });
  l = await layout();
  assert.ok(l.panel.left >= 0 && l.panel.right <= l.vw + 0.5, `the member list fits the screen: ${JSON.stringify(l.panel)}`);
  assert.ok(l.scrollWidth <= l.vw, 'still no sideways scroll with the member list open');
  assert.deepEqual(await members(ivy), ['ivy', 'jo']);
  await s.screenshot(ivy, 'phone-375x667-members');
  await ivy.keyboard.press('Escape');
  await ivy.getByTestId('member-panel').waitFor({ state: 'hidden' });
  assert.equal(await toggle.getAttribute('aria-expanded'), 'false');

  // The directory dialog fits too.
  await waitInDirectory(ivy, room, `#${room}`);
  const dialog = await ivy.getByTestId('directory-dialog').boundingBox();
  assert.ok(dialog.x >= 0 && dialog.x + dialog.width <= 375.5, `the directory fits the screen: ${JSON.stringify(dialog)}`);
  assert.ok((await layout()).scrollWidth <= 375);
  await s.screenshot(ivy, 'phone-375x667-directory');
  await ivy.keyboard.press('Escape');
  await ivy.getByTestId('directory-dialog').waitFor({ state: 'hidden' });
});

it('keyboard only: Tab from the top to the message box, Enter sends; arrows move in the room list', async (s) => {
  const room = uniqueRoom('keys');
  const kai = await s.open('kai-gw0', gw(0), { room, user: 'kai' });
  await waitJoined(kai, room);

  // Start from the top of the page: a click on the (not focusable) brand drops the focus
  // there, then only the keyboard is used.
  await kai.locator('.brand').click();
  assert.notEqual(await kai.evaluate(() => document.activeElement.dataset.testid), 'send-box');
  const visited = [];
  for (let n = 0; n < 40; n++) {
    await kai.keyboard.press('Tab');
    const focus = await kai.evaluate(() => {
      const e = document.activeElement;
      const cs = getComputedStyle(e);
      return {
        what: e.dataset.testid || e.id || e.tagName,
        visible: e.matches(':focus-visible') && (cs.boxShadow !== 'none' || cs.outlineStyle !== 'none'),
        named: !!(e.getAttribute('aria-label') || e.labels?.length || e.textContent.trim()),
      };
    });
    visited.push(focus);
    if (focus.what === 'send-box') break;
  }
  assert.equal(visited.at(-1).what, 'send-box', `Tab never reached the message box: ${JSON.stringify(visited.map((v) => v.what))}`);
  const noRing = visited.filter((v) => !v.visible).map((v) => v.what);
  assert.deepEqual(noRing, [], 'every element reached by Tab shows where the focus is');
  const unnamed = visited.filter((v) => !v.named).map((v) => v.what);
  assert.deepEqual(unnamed, [], 'every element reached by Tab has a name');
  assert.ok(visited.some((v) => v.what === 'room-item'), 'the room list is reachable');
  assert.ok(visited.some((v) => v.what === 'directory-open'), 'the directory button is reachable');
  assert.ok(visited.some((v) => v.what === 'members-toggle'), 'the member list toggle is reachable');

  await kai.keyboard.type('sent with the keyboard only');
  await kai.keyboard.press('Enter');
  await waitTexts(kai, ['sent with the keyboard only']);
  await waitFor(kai, 'the message to be acked', () => !document.querySelector('[data-testid=message][data-pending=true]'));

  // Back to the room list with Shift+Tab; the arrow keys move between rooms.
  for (let n = 0; n < 40; n++) {
    if (await kai.evaluate((r) => document.activeElement.dataset.room === r && document.activeElement.dataset.testid === 'room-item', room)) break;
    await kai.keyboard.press('Shift+Tab');
  }
  assert.equal(await kai.evaluate(() => document.activeElement.dataset.room), room, 'Shift+Tab reaches the open room');
  await kai.keyboard.press('ArrowUp');
  assert.equal(await kai.evaluate(() => document.activeElement.dataset.room), 'general', 'ArrowUp moves to the room above');
  await kai.keyboard.press('ArrowDown');
  assert.equal(await kai.evaluate(() => document.activeElement.dataset.room), room, 'ArrowDown moves back');

  // The directory opens with Enter on its button and closes with Escape, focus returning.
  for (let n = 0; n < 10 && await kai.evaluate(() => document.activeElement.dataset.testid) !== 'directory-open'; n++) {
    await kai.keyboard.press('Tab');
  }
  assert.equal(await kai.evaluate(() => document.activeElement.dataset.testid), 'directory-open');
  await kai.keyboard.press('Enter');
  await kai.getByTestId('directory-dialog').waitFor({ state: 'visible' });
  assert.ok(await kai.evaluate(() => document.getElementById('directory-dialog').contains(document.activeElement)),
    'the focus moves into the dialog');
  await kai.keyboard.press('Escape');
  await kai.getByTestId('directory-dialog').waitFor({ state: 'hidden' });
  assert.equal(await kai.evaluate(() => document.activeElement.dataset.testid), 'directory-open');
  assert.equal(await kai.evaluate(() => document.body.dataset.joined), room, 'still in the same room');
});

it('over the list threshold only the count is shown; the full list comes back (frames injected)', async (s) => {
  const room = uniqueRoom('threshold');
  // The page talks to the real gateway, but here the test plays the server's part for
  // presence: the gateway's own presence frames are held back (its "joined" still goes
  // through), and the frames a big room would bring are injected.
  let toPage = null;
  const context = await s.newContext();
  await context.routeWebSocket(/\/ws\?/, (ws) => {
    const server = ws.connectToServer();
    toPage = ws;
    server.onMessage((raw) => {
      let frame = null;
      try { frame = JSON.parse(String(raw)); } catch (_) { /* not JSON: pass it on */ }
      if (frame && (frame.type === 'presence' || frame.type === 'presence_diff')) return;
      ws.send(raw);
    });
  });
  const inject = (frame) => toPage.send(JSON.stringify(frame));
  const lee = await s.open('lee-gw0', gw(0), { room, user: 'lee', context, transport: 'websocket' });
  await waitJoined(lee, room);
  await waitMembers(lee, ['lee']);

  inject({ type: 'presence_diff', room, count: 150 });
  await waitFor(lee, 'the count alone', () => {
    const summary = document.querySelector('[data-testid=member-summary]');
    return !summary.hidden && summary.textContent === '150 online'
      && !document.querySelector('[data-testid=member-list] [data-testid=member]');
  });
  assert.equal(await lee.getByTestId('members-toggle-count').textContent(), '150');
  inject({ type: 'presence_diff', room, count: 149 });
  await waitFor(lee, 'the new count', () => document.querySelector('[data-testid=member-summary]').textContent === '149 online');
  // Frames about another room change nothing.
  inject({ type: 'presence_diff', room: `${room}-other`, count: 7 });
  inject({ type: 'presence', room, count: 2, members: [{ user: 'lee', joined_at: 1 }, { user: 'mo', joined_at: 2 }] });
  await waitMembers(lee, ['lee', 'mo']);
  assert.equal(await lee.getByTestId('member-summary').isVisible(), false);
  // Set semantics by user: a join of a listed user replaces it; a leave and a join in one diff.
  inject({
    type: 'presence_diff', room, count: 2,
    joins: [{ user: 'mo', joined_at: 3 }, { user: 'ned', joined_at: 4 }],
    leaves: [{ user: 'mo', joined_at: 2 }],
  });
  await waitMembers(lee, ['lee', 'mo', 'ned']);
  inject({ type: 'presence_diff', room, count: 2, joins: [], leaves: [{ user: 'ned', joined_at: 4 }] });
  await waitMembers(lee, ['lee', 'mo']);
  assert.equal(await lee.getByTestId('members-toggle-count').textContent(), '2');

  // Typing notices: own ones and other rooms' are ignored; three people are "several".
  inject({ type: 'typing', room, user: 'lee' });
  inject({ type: 'typing', room: `${room}-other`, user: 'zed' });
  inject({ type: 'typing', room, user: 'mo' });
  await waitTyping(lee, 'mo is typing…');
  inject({ type: 'typing', room, user: 'ned' });
  await waitTyping(lee, 'mo and ned are typing…');
  inject({ type: 'typing', room, user: 'oz' });
  await waitTyping(lee, 'several people are typing…');
});
