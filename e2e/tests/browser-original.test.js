'use strict';
// The original app's page in Chromium: e2e/fixtures/original-app.html, with socket.io-client
// and class-transformer 0.5.1 loaded in the page and its three handlers. As with the
// original (a Next.js app on its own port), a static server here serves the page, and the
// page connects to the chat server across origins. Against `roomcast` alone and against two gateways: one page creates a room from no room,
// a second page joins it from the room list, and each shows the other's messages.

const assert = require('node:assert/strict');
const fs = require('node:fs');
const path = require('node:path');
const http = require('node:http');
const { before, after } = require('node:test');
const { startStandalone, startStack, freePort } = require('../lib/harness');
const { usePageFrom, launchBrowser, browserTest, waitFor } = require('../lib/browser');

const E2E = path.resolve(__dirname, '..');
const ASSETS = {
  '/original-app/': ['fixtures/original-app.html', 'text/html'],
  '/original-app/socket.io.min.js': ['node_modules/socket.io-client/dist/socket.io.min.js', 'text/javascript'],
  '/original-app/class-transformer.umd.min.js':
    ['node_modules/class-transformer/bundles/class-transformer.umd.min.js', 'text/javascript'],
};

let pageServer;
let pageOrigin;
let standalone;
let stack;
let browser;

/** The page's own origin: a static server of ASSETS on loopback. */
async function servePage() {
  const port = await freePort();
  pageServer = http.createServer((req, res) => {
    const asset = ASSETS[new URL(req.url, 'http://x').pathname];
    if (!asset) { res.writeHead(404); res.end(); return; }
    res.writeHead(200, { 'content-type': asset[1] });
    res.end(fs.readFileSync(path.join(E2E, asset[0])));
  });
  await new Promise((resolve) => pageServer.listen(port, '127.0.0.1', resolve));
  pageOrigin = `http://127.0.0.1:${port}`;
}

before(async () => {
  await servePage();
  standalone = await startStandalone('original-page');
  stack = await startStack('original-page', 2);
  await usePageFrom([standalone.url, ...stack.gateways]);
  browser = await launchBrowser();
}, { timeout: 240_000 });

after(async () => {
  if (browser) await browser.close();
  if (stack) await stack.stop();
  if (standalone) await standalone.stop();
  if (pageServer) pageServer.close();
});

const it = (name, fn) => browserTest('original', () => browser, name, fn);

/** The original page, as `user`, talking to the chat server at `base`. */
async function openPage(s, label, base, user) {
  const query = new URLSearchParams({ server: base, user });
  return s.openUrl(label, `${pageOrigin}/original-app/?${query}`, await s.newContext());
}

const bodies = (page) => page.$$eval('[data-testid=message]', (els) => els.map((e) => e.textContent));

async function chat(s, baseA, baseB) {
  const roomName = `Original ${process.pid} ${Date.now() % 100000}`;
  const a = await openPage(s, 'ann', baseA, 'ann');
  const b = await openPage(s, 'ben', baseB, 'ben');

  await a.getByTestId('new-room').fill(roomName);
  await a.getByTestId('create-room').click();
  const join = `Join ${roomName}`;
  await waitFor(a, 'ann in the room she created', (title) => {
    const button = document.querySelector(`button[title="${title}"]`);
    return button && button.disabled && document.body.dataset.roomId !== '';
  }, join);
  await b.locator(`button[title="${join}"]`).click();
  const roomId = await a.evaluate(() => document.body.dataset.roomId);
  await waitFor(b, 'ben in the room', (id) => document.body.dataset.roomId === id, roomId);

  await a.getByTestId('message-input').fill('hello from the original page');
  await a.getByTestId('send').click();
  await waitFor(b, 'ann\'s message', () => document.body.textContent.includes('hello from the original page'));
  await b.getByTestId('message-input').fill('hi back');
  await b.getByTestId('send').click();
  await waitFor(a, 'ben\'s message', () => document.body.textContent.includes('hi back'));

  const shownA = await bodies(a);
  const shownB = await bodies(b);
  assert.equal(shownA.length, 2, `ann shows ${JSON.stringify(shownA)}`);
  assert.match(shownA[0], /^You - \d{1,2}:\d{1,2}hello from the original page$/);
  assert.match(shownA[1], /^ben - \d{1,2}:\d{1,2}hi back$/);
  assert.equal(shownB.length, 2, `ben shows ${JSON.stringify(shownB)}`);
  assert.match(shownB[0], /^ann - \d{1,2}:\d{1,2}hello from the original page$/);
}

it('roomcast alone: create a room, join it from the list, chat', (s) => chat(s, standalone.url, standalone.url));
it('two gateways: create a room, join it from the list, chat', (s) => chat(s, stack.gateways[0], stack.gateways[1]));
