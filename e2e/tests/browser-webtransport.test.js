'use strict';
// WebTransport in the web client (issue #16): a page uses WebTransport when the browser has
// it and the server offers it (GET /wt/cert-hash), WebSocket otherwise or when told so
// (?transport=websocket), and shows which one in the header (#transport, data-transport).
//
// (a) one-process `roomcast`, which serves WebTransport on UDP at its --listen port with a
//     self-signed certificate (accepted by the browser by its hash);
// (b) two gateways of the distributed stack, each started with --webtransport-cert/-key
//     (a 10-day ECDSA P-256 certificate made by the harness with openssl).
// In each, a WebTransport page and a WebSocket page share a room, write both ways, and must
// show the same messages in the same order. Chromium runs with QUIC on (no --disable-quic).

const assert = require('node:assert/strict');
const fs = require('node:fs');
const { before, after } = require('node:test');
const { startStandalone, startStack, httpGet } = require('../lib/harness');
const {
  usePageFrom, launchBrowser, browserTest, confirmed, pending, waitFor, waitJoined, waitTexts, send, type,
  uniqueRoom,
} = require('../lib/browser');

let server;
let stack;
let browser;

before(async () => {
  server = await startStandalone('webtransport');
  stack = await startStack('webtransport', 2, { webtransport: true });
  await usePageFrom([server.url, ...stack.gateways]);
  browser = await launchBrowser({ quic: true });
}, { timeout: 240_000 });

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
  if (server) await server.stop();
});

const it = (name, fn, opts) => browserTest('webtransport', () => browser, name, fn, opts);

/** The server's answer to GET /wt/cert-hash, checked against the contract. */
async function offer(url) {
  const res = await httpGet(Number(new URL(url).port), '/wt/cert-hash');
  assert.ok(res, `${url}/wt/cert-hash did not answer`);
  assert.equal(res.status, 200, `${url}/wt/cert-hash: ${res.status} ${res.body}`);
  const body = JSON.parse(res.body);
  assert.ok(body.url === null || typeof body.url === 'string', `url: ${res.body}`);
  assert.ok(Number.isInteger(body.port) && body.port > 0, `port: ${res.body}`);
  assert.match(body.sha256, /^[0-9a-f]{64}$/, `sha256 (the certificate is valid <= 14 days): ${res.body}`);
  return body;
}

/** Waits until the page's transport hint says `kind`, and returns what it shows. */
async function waitTransport(page, kind) {
  await waitFor(page, `the transport hint to say ${kind}`,
    (k) => document.querySelector('[data-testid=transport]').dataset.transport === k
      && document.body.dataset.transport === k && document.body.dataset.status === 'connected', kind);
  return page.evaluate(() => {
    const hint = document.getElementById('transport-hint');
    const el = document.querySelector('[data-testid=transport]');
    return {
      text: el.textContent,
      fallback: el.dataset.fallback,
      note: !document.querySelector('[data-testid=transport-note]').hidden,
      title: hint.title,
      visible: !hint.hidden && hint.getBoundingClientRect().width > 0,
    };
  });
}

/** The frame log of a page: [{ transport, dir, frame } | { event, ... }]. */
function frameLog(s, label) {
  return fs.readFileSync(s.framesFile(label), 'utf8').trim().split('\n').filter(Boolean).map((l) => JSON.parse(l));
}

/**
 * `a` and `b` in one room write both ways (also several messages without waiting, and a
 * long multi-byte one, more than one QUIC packet); both must show the same messages, with
 * the same seqs, in the same order.
 */
async function exchange(a, b, tag) {
  await send(a, `${tag}: hello from the WebTransport page`);
  await waitTexts(b, [`${tag}: hello from the WebTransport page`]);
  await send(b, `${tag}: hello back from the WebSocket page`);
  await waitTexts(a, [`${tag}: hello back from the WebSocket page`]);

  // Interleaved, without waiting for acks in between.
  const burst = [];
  for (let n = 1; n <= 4; n++) {
    burst.push(`${tag}: a${n}`, `${tag}: b${n}`);
    await type(a, `${tag}: a${n}`);
    await type(b, `${tag}: b${n}`);
  }
  // Long, multi-byte, with new lines (escaped in JSON): split across chunks on the stream.
  const long = `${tag}: ${'naïve café ☕ 😀 — '.repeat(120)}\nsecond line\nthird line`;
  await type(b, long);
  const short = `${tag}: ${'ü'.repeat(3)}`;
  await type(a, short);
  const all = [...burst, long, short];
  await waitTexts(a, all);
  await waitTexts(b, all);
  for (const page of [a, b]) {
    await waitFor(page, 'every message acked', () => !document.querySelector('[data-testid=message][data-pending=true]'));
  }

  const la = await confirmed(a);
  const lb = await confirmed(b);
  const view = (list) => list.map(({ seq, id, user, text }) => ({ seq, id, user, text }));
  assert.deepEqual(view(lb), view(la), 'both pages show the same messages, in the same order');
  const seqs = la.map((m) => m.seq);
  assert.deepEqual(seqs, [...seqs].sort((x, y) => x - y), 'in seq order');
  assert.equal(new Set(seqs).size, seqs.length, 'each seq once');
  assert.equal(la.length, 2 + all.length);
  assert.equal(la.find((m) => m.text === long)?.text, long, 'the long message arrived whole');
  assert.deepEqual(await pending(a), []);
  assert.deepEqual(await pending(b), []);
  return la;
}

/** The WebTransport page's frame log: frames over WebTransport only, no WebSocket opened. */
function assertWebTransportFrames(s, label) {
  const log = frameLog(s, label);
  const wt = log.filter((e) => e.transport === 'webtransport' && e.dir);
  assert.ok(wt.some((e) => e.dir === 'sent' && JSON.parse(e.frame).type === 'join'), 'the join went over WebTransport');
  assert.ok(wt.some((e) => e.dir === 'recv' && JSON.parse(e.frame).type === 'joined'), 'joined came over WebTransport');
  assert.ok(wt.some((e) => e.dir === 'recv' && JSON.parse(e.frame).type === 'ack'), 'acks came over WebTransport');
  assert.ok(log.some((e) => e.transport === 'webtransport' && e.event === 'open'), 'the session open is logged');
  assert.equal(log.filter((e) => e.event === 'open' && !e.transport).length, 0, 'no WebSocket was opened');
}

it('roomcast: a WebTransport page and a WebSocket page in one room', async (s) => {
  const offered = await offer(server.url);
  assert.equal(offered.port, server.port, 'WebTransport on UDP at the --listen port');
  const room = uniqueRoom('wt-roomcast');
  const uma = await s.open('uma-webtransport', server.url, { room, user: 'uma' });
  const vic = await s.open('vic-websocket', server.url, { room, user: 'vic', transport: 'websocket' });
  await waitJoined(uma, room);
  await waitJoined(vic, room);

  const wtHint = await waitTransport(uma, 'webtransport');
  assert.equal(wtHint.text, 'WebTransport');
  assert.equal(wtHint.fallback, 'false');
  assert.ok(wtHint.visible, 'the hint is shown');
  assert.match(wtHint.title, /WebTransport/);
  const wsHint = await waitTransport(vic, 'websocket');
  assert.equal(wsHint.text, 'WebSocket');
  assert.equal(wsHint.note, false, 'forced, not a fallback');
  assert.match(wsHint.title, /transport=websocket/);

  const shown = await exchange(uma, vic, 'roomcast');
  await s.screenshot(uma, 'uma-webtransport-chat');
  await s.screenshot(vic, 'vic-websocket-chat');
  assertWebTransportFrames(s, 'uma-webtransport');

  // A reload comes back over WebTransport with the history.
  await uma.reload();
  await waitJoined(uma, room);
  await waitTransport(uma, 'webtransport');
  await waitTexts(uma, shown.map((m) => m.text));
  assert.deepEqual((await confirmed(uma)).map((m) => m.seq), shown.map((m) => m.seq), 'the same history, in order');
});

it('roomcast: a page whose WebTransport fails falls back to WebSocket and says so (phone-sized)', async (s) => {
  const room = uniqueRoom('wt-fallback');
  const context = await s.newContext({
    viewport: { width: 375, height: 667 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  // The server's offer with a wrong certificate hash: the browser refuses the session.
  await context.route((url) => url.pathname === '/wt/cert-hash', async (route) => {
    const response = await route.fetch();
    const body = { ...(await response.json()), sha256: '00'.repeat(32) };
    await route.fulfill({ response, body: JSON.stringify(body) });
  });
  const wes = await s.open('wes-fallback-phone', server.url, { room, user: 'wes', context });
  const xia = await s.open('xia-webtransport', server.url, { room, user: 'xia' });
  await waitJoined(wes, room);
  await waitJoined(xia, room);
  await waitTransport(xia, 'webtransport');
  const hint = await waitTransport(wes, 'websocket');
  assert.equal(hint.fallback, 'true', 'marked as a fallback');
  assert.ok(hint.note, 'the "fallback" note is shown');
  assert.match(hint.title, /WebTransport did not connect/);
  assert.ok(hint.visible);

  await send(wes, 'over the fallback');
  await waitTexts(xia, ['over the fallback']);
  await send(xia, 'over WebTransport');
  await waitTexts(wes, ['over WebTransport']);
  assert.deepEqual((await confirmed(wes)).map((m) => m.seq), (await confirmed(xia)).map((m) => m.seq));

  // The hint fits the phone's header: on screen, nothing scrolls sideways.
  const layout = await wes.evaluate(() => {
    const r = document.getElementById('transport-hint').getBoundingClientRect();
    const head = document.querySelector('.chat-head').getBoundingClientRect();
    return { left: r.left, right: r.right, top: r.top, bottom: r.bottom, headBottom: head.bottom,
      vw: window.innerWidth, scrollWidth: document.documentElement.scrollWidth };
  });
  assert.ok(layout.left >= 0 && layout.right <= layout.vw + 0.5, `the hint is on screen: ${JSON.stringify(layout)}`);
  assert.ok(layout.bottom <= layout.headBottom + 0.5, `the hint is inside the header: ${JSON.stringify(layout)}`);
  assert.ok(layout.scrollWidth <= layout.vw, `no sideways scroll: ${JSON.stringify(layout)}`);
  await s.screenshot(wes, 'wes-fallback-phone-375x667');

  // Given up for the page's life: after a reconnect it still uses WebSocket, without trying again.
  const log = frameLog(s, 'wes-fallback-phone');
  assert.ok(log.some((e) => e.transport === 'webtransport' && e.event === 'close'), 'the failed session is logged');
  assert.ok(!log.some((e) => e.transport === 'webtransport' && e.dir), 'no frame went over WebTransport');
  // (The browser's offline/online events: the page drops its connection and reconnects.)
  await wes.evaluate(() => { window.dispatchEvent(new Event('offline')); window.dispatchEvent(new Event('online')); });
  await waitJoined(wes, room);
  await waitTransport(wes, 'websocket');
  const closes = frameLog(s, 'wes-fallback-phone').filter((e) => e.transport === 'webtransport' && e.event === 'close');
  assert.equal(closes.length, 1, 'WebTransport is not tried again');
});

it('two gateways: a WebTransport page on gateway 0 and a WebSocket page on gateway 1', async (s) => {
  for (const url of stack.gateways) await offer(url);
  const room = uniqueRoom('wt-gateways');
  const yan = await s.open('yan-webtransport-gw0', stack.gateways[0], { room, user: 'yan' });
  const zoe = await s.open('zoe-websocket-gw1', stack.gateways[1], { room, user: 'zoe', transport: 'websocket' });
  await waitJoined(yan, room);
  await waitJoined(zoe, room);
  assert.equal((await waitTransport(yan, 'webtransport')).text, 'WebTransport');
  assert.equal((await waitTransport(zoe, 'websocket')).text, 'WebSocket');

  await exchange(yan, zoe, 'gateways');
  await s.screenshot(yan, 'yan-webtransport-gw0-chat');
  await s.screenshot(zoe, 'zoe-websocket-gw1-chat');
  assertWebTransportFrames(s, 'yan-webtransport-gw0');

  // Presence works across the two transports too.
  await waitFor(yan, 'both users in the member list', () => document.body.dataset.presence === '2');
  await waitFor(zoe, 'both users in the member list', () => document.body.dataset.presence === '2');
});
