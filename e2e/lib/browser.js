'use strict';
// Headless Chromium (Debian's /usr/bin/chromium, driven by playwright-core) and helpers to
// drive the chat page through its test hooks (web/README.md, "Test hooks").
//
// Which page is tested: the binaries embed web/index.html at compile time, so a binary
// built before the last edit of the page serves an older copy. `usePageFrom(urls)` checks:
// if the servers serve this checkout's web/index.html, the page is used exactly as served.
// If not, it says so and the document at `/` is still requested from the server, but its
// body is replaced with web/index.html from the working tree. Chromium gives such a
// substituted response no IP address space, so its Local Network Access checks would then
// block the page's WebSocket to 127.0.0.1; only in that mode are those checks turned off.
// ROOMCAST_E2E_PAGE=served or =file forces one mode. Everything else is real.
//
// Nothing here waits a fixed time: every wait is for a condition, with a generous limit.

const fs = require('node:fs');
const path = require('node:path');
const test = require('node:test');
const { chromium } = require('playwright-core');
const { OUT_DIR, PAGE_FILE, servesPageFile } = require('./harness');

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOT_DIR = path.join(OUT_DIR, 'e2e');
const WAIT_MS = 30_000;
let pageMode = null; // 'served' | 'file', set by usePageFrom()
let pageNote = '';    // said once, as a diagnostic of the first test

/** Decides which page the tests load (see the top of this file); call before launchBrowser(). */
async function usePageFrom(urls) {
  const forced = process.env.ROOMCAST_E2E_PAGE;
  if (forced === 'served' || forced === 'file') {
    pageMode = forced;
    return pageMode;
  }
  const stale = [];
  for (const url of urls) {
    if (!(await servesPageFile(Number(new URL(url).port)))) stale.push(url);
  }
  pageMode = stale.length ? 'file' : 'served';
  if (stale.length) {
    pageNote = `note: ${stale.join(', ')} serve(s) a web/index.html other than this checkout's (binaries built `
      + 'before the last edit of the page?): testing web/index.html from the working tree; rebuild to test the embedded copy';
    console.error(pageNote);
  }
  return pageMode;
}

/**
 * Launches headless Chromium. QUIC is off (`--disable-quic`) unless `quic` is true: the
 * WebTransport tests need it (WebTransport is HTTP/3 over QUIC).
 */
async function launchBrowser({ quic = false } = {}) {
  if (!pageMode) throw new Error('call usePageFrom(serverUrls) before launchBrowser()');
  try {
    fs.accessSync(CHROMIUM, fs.constants.X_OK);
  } catch (_) {
    throw new Error(`${CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium), `
      + 'or run scripts/test-e2e.sh, which does');
  }
  // launch() gives the browser a fresh, empty, temporary --user-data-dir of its own and
  // removes it on close.
  const args = [
    '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--no-first-run', '--disable-component-update', '--disable-sync',
  ];
  if (!quic) args.push('--disable-quic');
  if (pageMode === 'file') args.push('--disable-features=LocalNetworkAccessChecks');
  return chromium.launch({ executablePath: CHROMIUM, headless: true, args });
}

function slug(s) {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 60);
}

/**
 * One test's browser pages. Every page opened through it is screenshotted into
 * test-output/e2e/ when the test ends (passed or failed), and its context closed.
 * Uncaught page errors and dialogs are recorded; uncaught errors fail the test.
 */
class Session {
  constructor(browser, file, name) {
    this.browser = browser;
    this.prefix = `${slug(file)}--${slug(name)}`;
    this.contexts = [];
    this.pages = []; // { page, label }
    this.pageErrors = [];
    this.dialogs = [];
    this.shots = [];
  }

  async newContext(options = {}) {
    const context = await this.browser.newContext({ viewport: { width: 1100, height: 760 }, ...options });
    if (pageMode === 'file') {
      const html = fs.readFileSync(PAGE_FILE, 'utf8');
      await context.route((url) => url.pathname === '/', async (route) => {
        const response = await route.fetch();
        await route.fulfill({ response, body: html });
      });
    }
    this.contexts.push(context);
    return context;
  }

  /**
   * Opens the chat page of `base` (a server URL) in `context` (or a new one) at `#room`.
   * With `user`, the name comes from ?user=; without, the page asks for one. With
   * `transport` ('websocket'), the page is told to use it (?transport=).
   */
  async open(label, base, { room, user, transport, context, viewport, ...contextOptions } = {}) {
    const ctx = context || await this.newContext(viewport ? { viewport, ...contextOptions } : contextOptions);
    const params = new URLSearchParams();
    if (user) params.set('user', user);
    if (transport) params.set('transport', transport);
    const query = params.size ? `?${params}` : '';
    return this.openUrl(label, `${base}/${query}${room ? `#${room}` : ''}`, ctx);
  }

  /** Opens `url` in `context`: a page that is screenshotted, and whose errors and frames are recorded. */
  async openUrl(label, url, context) {
    const page = await context.newPage();
    page.setDefaultTimeout(WAIT_MS);
    page.on('pageerror', (err) => this.pageErrors.push(`${label}: ${err.message}`));
    page.on('dialog', (dialog) => {
      this.dialogs.push(`${label}: ${dialog.type()} ${dialog.message()}`);
      dialog.dismiss().catch(() => {});
    });
    this.pages.push({ page, label });
    await this.recordFrames(page, label);
    await page.goto(url);
    return page;
  }

  /** The frame log of the page opened as `label` (see recordFrames). */
  framesFile(label) {
    return path.join(SHOT_DIR, `${this.prefix}--${slug(label)}.frames.jsonl`);
  }

  /**
   * Every frame of the page, both ways, to test-output/e2e/<test>--<label>.frames.jsonl:
   * WebSocket frames as Chromium saw them, and WebTransport frames (with
   * `"transport":"webtransport"`) as the page's adapter passed them to its frame hook,
   * `window.__roomcastFrame(dir, kind, text)` (web/README.md, "Test hooks").
   */
  async recordFrames(page, label) {
    fs.mkdirSync(SHOT_DIR, { recursive: true });
    const file = this.framesFile(label);
    fs.writeFileSync(file, '');
    const write = (entry) => fs.appendFileSync(file, `${JSON.stringify({ t: new Date().toISOString(), ...entry })}\n`);
    await page.exposeFunction('__roomcastFrame', (dir, kind, text) => {
      if (kind !== 'webtransport') return; // WebSocket frames are recorded below
      if (dir === 'sent' || dir === 'recv') write({ transport: kind, dir, frame: String(text) });
      else write({ transport: kind, event: String(dir), detail: String(text) });
    });
    page.on('websocket', (ws) => {
      write({ event: 'open', url: ws.url() });
      ws.on('framesent', (f) => write({ dir: 'sent', frame: String(f.payload) }));
      ws.on('framereceived', (f) => write({ dir: 'recv', frame: String(f.payload) }));
      ws.on('socketerror', (err) => write({ event: 'error', error: String(err) }));
      ws.on('close', () => write({ event: 'close' }));
    });
  }

  async screenshot(page, label) {
    fs.mkdirSync(SHOT_DIR, { recursive: true });
    const file = path.join(SHOT_DIR, `${this.prefix}--${slug(label)}.png`);
    await page.screenshot({ path: file });
    this.shots.push(file);
    return file;
  }

  async close() {
    for (const { page, label } of this.pages) {
      if (page.isClosed()) continue;
      await this.screenshot(page, label).catch((err) => console.log(`# screenshot of ${label} failed: ${err.message}`));
    }
    for (const context of this.contexts) await context.close().catch(() => {});
  }
}

/**
 * Declares a browser test: `fn(session, t)` gets a Session; screenshots are taken and
 * contexts closed afterwards, whatever happened. `getBrowser` is called when it runs.
 */
function browserTest(file, getBrowser, name, fn, { timeout = 180_000 } = {}) {
  test(name, { timeout }, async (t) => {
    const session = new Session(getBrowser(), file, name);
    if (pageNote) { t.diagnostic(pageNote); pageNote = ''; }
    try {
      await fn(session, t);
      if (session.pageErrors.length) throw new Error(`uncaught errors in the page:\n${session.pageErrors.join('\n')}`);
    } finally {
      await session.close();
      if (session.shots.length) t.diagnostic(`screenshots: ${session.shots.map((f) => path.relative(process.cwd(), f)).join(', ')}`);
    }
  });
}

// ------------------------------------------------------------------ reading the page

/** Confirmed messages (those with data-seq), in DOM order. */
function confirmed(page) {
  return page.$$eval('[data-testid=message][data-seq]', (els) => els.map((e) => ({
    seq: Number(e.dataset.seq),
    id: e.dataset.id || '',
    user: e.dataset.user,
    own: e.classList.contains('own'),
    text: e.querySelector('[data-testid=message-text]').textContent,
  })));
}

/** Pending own messages (not acked yet), in DOM order. */
function pending(page) {
  return page.$$eval('[data-testid=message][data-pending=true]', (els) => els.map((e) => ({
    clientId: e.dataset.clientId,
    state: e.dataset.state,
    text: e.querySelector('[data-testid=message-text]').textContent,
  })));
}

async function describe(page) {
  const state = await page.evaluate(() => ({
    status: document.body.dataset.status,
    joined: document.body.dataset.joined,
    user: document.body.dataset.user,
    online: document.body.dataset.presence,
    members: Array.from(document.querySelectorAll('[data-testid=member-list] [data-testid=member]'), (e) => e.dataset.user),
    typing: (document.querySelector('[data-testid=typing-text]') || {}).textContent,
  })).catch((err) => ({ error: err.message }));
  const msgs = await confirmed(page).catch(() => []);
  const pend = await pending(page).catch(() => []);
  return `page state ${JSON.stringify(state)}; confirmed ${JSON.stringify(msgs.map((m) => [m.seq, m.user, m.text]))}; `
    + `pending ${JSON.stringify(pend.map((p) => [p.state, p.text]))}`;
}

/** Waits for `fn(arg)` to be true in the page; on timeout, the error says what the page showed. */
async function waitFor(page, what, fn, arg, timeout = WAIT_MS) {
  try {
    await page.waitForFunction(fn, arg, { timeout, polling: 100 });
  } catch (err) {
    throw new Error(`timed out after ${timeout / 1000}s waiting for ${what}: ${await describe(page)}\n(${err.message.split('\n')[0]})`);
  }
}

/** Connected and joined to `room`. */
function waitJoined(page, room) {
  return waitFor(page, `the page to connect and join #${room}`,
    (r) => document.body.dataset.status === 'connected' && document.body.dataset.joined === r, room);
}

/** Every text in `texts` is shown as a confirmed message. */
function waitTexts(page, texts) {
  return waitFor(page, `messages ${JSON.stringify(texts)}`, (want) => {
    const have = new Set(Array.from(document.querySelectorAll('[data-testid=message][data-seq] [data-testid=message-text]'),
      (e) => e.textContent));
    return want.every((t) => have.has(t));
  }, texts);
}

/** Types `text` in the composer and presses Enter. */
async function type(page, text) {
  const box = page.getByTestId('send-box');
  await box.fill(text);
  await box.press('Enter');
}

/** Sends `text` and waits until it is acked (shown as a confirmed message, no longer pending). */
async function send(page, text) {
  await type(page, text);
  await waitFor(page, `the ack of ${JSON.stringify(text)}`, (t) => {
    const isText = (e) => e.querySelector('[data-testid=message-text]').textContent === t;
    const all = Array.from(document.querySelectorAll('[data-testid=message]'));
    return all.some((e) => e.dataset.seq && isText(e)) && !all.some((e) => e.dataset.pending === 'true' && isText(e));
  }, text);
}

/** Picks a name in the name dialog shown on a first visit. */
async function pickName(page, name) {
  const input = page.getByTestId('username-input');
  await input.waitFor({ state: 'visible' });
  await input.fill(name);
  await page.getByTestId('username-save').click();
  await waitFor(page, `the name ${name} to be taken`, (n) => document.body.dataset.user === n, name);
}

/** The open room's member list as shown (data-user of each member, in display order). */
function members(page) {
  return page.$$eval('[data-testid=member-list] [data-testid=member]', (els) => els.map((e) => e.dataset.user));
}

/** The member list shows exactly `users` (in any order; the order is checked by the caller). */
function waitMembers(page, users, what = `the member list to show ${JSON.stringify(users)}`) {
  return waitFor(page, what, (want) => {
    const have = Array.from(document.querySelectorAll('[data-testid=member-list] [data-testid=member]'),
      (e) => e.dataset.user).sort();
    return JSON.stringify(have) === JSON.stringify([...want].sort());
  }, users);
}

/** The "… is typing" line as shown ('' when nobody types). */
function typingText(page) {
  return page.$eval('[data-testid=typing-text]', (e) => e.textContent.trim());
}

let roomCounter = 0;
/** A room name no other test uses. */
function uniqueRoom(prefix) {
  roomCounter += 1;
  return `${prefix}-${process.pid}-${roomCounter}`;
}

module.exports = {
  usePageFrom, launchBrowser, browserTest, confirmed, pending, describe, waitFor, waitJoined, waitTexts,
  type, send, pickName, uniqueRoom, members, waitMembers, typingText, SHOT_DIR, WAIT_MS,
};
