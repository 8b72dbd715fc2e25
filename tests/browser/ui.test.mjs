// Drives the Starling web UI in Debian's Chromium (never a downloaded browser):
// two users sign up in two separate browser contexts, one follows the other, the followee
// posts, and the post appears at the top of the follower's #timeline without a reload.
//
//   node tests/browser/ui.test.mjs http://127.0.0.1:8080
//
// Environment: CHROMIUM (default /usr/bin/chromium), STARLING_SCREENSHOT (a PNG path: the
// follower's page at the end, or at the failure), STARLING_STEP_TIMEOUT_MS (default 30000).
// Exit code 0 on success; 1 with the failed step, the pages' console errors and the failed
// requests on stderr; 2 for bad usage or the whole run taking too long.
//
// The element ids are the contract in gateway/API.md ("Web UI element contract").

import { randomBytes } from 'node:crypto';
import { chromium } from 'playwright-core';

const STEP_MS = Number(process.env.STARLING_STEP_TIMEOUT_MS || 30_000);
const INNER_MS = Math.max(STEP_MS - 1_000, 1_000); // waits inside a step end before the step
const TOTAL_MS = 10 * STEP_MS;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SCREENSHOT = process.env.STARLING_SCREENSHOT || '';

const base = (process.argv[2] || '').replace(/\/+$/, '');
if (!/^https?:\/\/[^/]+$/.test(base)) {
  console.error('usage: node ui.test.mjs http://HOST:PORT');
  process.exit(2);
}

// Whatever happens (a hung browser, a wedged page), the run ends.
const watchdog = setTimeout(() => {
  console.error(`FAIL: the whole run took longer than ${TOTAL_MS} ms`);
  process.exit(2);
}, TOTAL_MS);
watchdog.unref();

const t0 = Date.now();
const log = (msg) => console.log(`[${String(Date.now() - t0).padStart(6)} ms] ${msg}`);

/** Runs one named step, bounded by STEP_MS; a failure names the step. */
async function step(name, fn) {
  const started = Date.now();
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${STEP_MS} ms`)), STEP_MS);
  });
  try {
    const result = await Promise.race([fn(), timeout]);
    log(`ok: ${name} (${Date.now() - started} ms)`);
    return result;
  } catch (e) {
    throw new Error(`step "${name}" failed: ${e && e.message ? e.message : e}`);
  } finally {
    clearTimeout(timer);
  }
}

/** A JSON API call from the test itself (to cross-check what the UI did). */
async function api(method, path, body, token) {
  const headers = { accept: 'application/json' };
  if (body !== undefined) headers['content-type'] = 'application/json';
  if (token) headers.authorization = `Bearer ${token}`;
  const res = await fetch(base + path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(STEP_MS),
  });
  const text = await res.text();
  let json;
  try {
    json = text ? JSON.parse(text) : null;
  } catch {
    json = null;
  }
  return { status: res.status, json, text };
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` (returning a truthy value when done) every 200 ms within the step bound. */
async function poll(what, probe) {
  const until = Date.now() + INNER_MS;
  let last;
  for (;;) {
    last = await probe();
    if (last && last.done) return last.value;
    if (Date.now() >= until) {
      throw new Error(`${what}; last seen: ${JSON.stringify(last && last.seen)}`);
    }
    await sleep(200);
  }
}

const suffix = randomBytes(4).toString('hex');
const followee = `ui_bob_${suffix}`; // posts
const follower = `ui_alice_${suffix}`; // follows, watches the timeline
const password = `pw-${randomBytes(8).toString('hex')}`;
const marker = `m${randomBytes(6).toString('hex')}`;
const text = `Finished a great novel for my book club ${marker}`;

// Diagnostics, printed when a step fails.
const problems = [];
function watch(page, who) {
  page.on('console', (m) => {
    if (m.type() === 'error' && !(m.location()?.url || '').endsWith('/favicon.ico')) problems.push(`${who} console error: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`${who} page error: ${e.message}`));
  page.on('requestfailed', (r) => {
    // The event stream is aborted when the page closes: not a problem.
    if (!r.url().includes('/timeline/stream')) {
      problems.push(`${who} request failed: ${r.method()} ${r.url()} ${r.failure()?.errorText}`);
    }
  });
  page.on('response', (r) => {
    if (r.status() >= 400 && !r.url().endsWith('/favicon.ico')) problems.push(`${who} HTTP ${r.status()}: ${r.request().method()} ${r.url()}`);
  });
}

/** Opens the UI signed out, signs `user` up and waits for the signed-in view. */
async function signUp(page, user) {
  await page.goto(base + '/', { waitUntil: 'load', timeout: STEP_MS });
  await page.locator('#auth').waitFor({ state: 'visible' });
  await page.locator('#auth-user').fill(user);
  await page.locator('#auth-password').fill(password);
  await page.locator('#signup-button').click();
  const outcome = await page.waitForFunction(
    (user) => {
      const visible = (el) => !!el && el.checkVisibility();
      const err = document.querySelector('#auth-error');
      if (visible(err) && err.textContent.trim()) return `error: ${err.textContent.trim()}`;
      const me = document.querySelector('#me');
      if (visible(document.querySelector('#app')) && visible(me) && me.textContent.includes(user)) {
        return 'ok';
      }
      return false;
    },
    user,
    { timeout: INNER_MS, polling: 100 },
  );
  const result = await outcome.jsonValue();
  if (result !== 'ok') throw new Error(`#auth-error says ${JSON.stringify(result)}`);
  const stored = await page.evaluate(() => ({
    token: localStorage.getItem('starling.token'),
    user: localStorage.getItem('starling.user'),
  }));
  if (!stored.token || stored.user !== user) {
    throw new Error(`localStorage after sign-up: ${JSON.stringify(stored)}`);
  }
  if (await page.locator('#auth').isVisible()) throw new Error('#auth still visible after sign-up');
  return stored.token;
}

let browser;
let followerPage;
let failed = null;
try {
  log(`base ${base}, chromium ${CHROMIUM}, users ${follower} -> ${followee}`);
  browser = await step('launch chromium', () =>
    // `launch` gives Chromium a fresh temporary user-data-dir (removed on close); each
    // context below is a separate, storage-isolated profile.
    chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      timeout: STEP_MS,
      args: [
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        '--disable-quic',
      ],
    }),
  );
  log(`chromium ${browser.version()}`);

  const followerCtx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  const followeeCtx = await browser.newContext({ viewport: { width: 1100, height: 900 } });
  followerPage = await followerCtx.newPage();
  const followeePage = await followeeCtx.newPage();
  for (const p of [followerPage, followeePage]) p.setDefaultTimeout(STEP_MS);
  watch(followerPage, follower);
  watch(followeePage, followee);

  // The follower's live timeline arrives over this stream (API.md): note when it opens.
  const streamPath = `/api/users/${follower}/timeline/stream`;
  const streamOpened = followerPage.waitForResponse((r) => r.url().includes(streamPath), {
    timeout: 3 * STEP_MS,
  });
  streamOpened.catch(() => {}); // awaited (and reported) below

  await step(`sign up ${followee}`, () => signUp(followeePage, followee));
  await step(`sign up ${follower}`, () => signUp(followerPage, follower));

  await step(`${follower} follows ${followee} with #follow-user / #follow-button`, async () => {
    await followerPage.locator('#follow-user').fill(followee);
    await followerPage.locator('#follow-button').click();
    await poll(`${follower} does not follow ${followee} according to the API`, async () => {
      const r = await api('GET', `/api/users/${follower}/following?page_size=100`);
      const users = r.json && r.json.users;
      return { done: r.status === 200 && Array.isArray(users) && users.includes(followee), seen: r.text };
    });
  });

  await step(`the follower's page opened ${streamPath}`, async () => {
    const res = await streamOpened;
    if (res.status() !== 200) throw new Error(`HTTP ${res.status()}`);
    const type = (await res.headerValue('content-type')) || '';
    if (!type.includes('text/event-stream')) throw new Error(`content-type ${type}`);
  });

  // From here on the follower's page must not navigate: a reload would lose this sentinel
  // and start a new document (a new time origin and navigation entry).
  const before = await followerPage.evaluate((sentinel) => {
    window.__starlingSentinel = sentinel;
    return {
      origin: performance.timeOrigin,
      navigations: performance.getEntriesByType('navigation').length,
      url: location.href,
      tweets: document.querySelectorAll('#timeline .tweet').length,
    };
  }, marker);
  if (before.navigations !== 1) throw new Error(`navigation entries before posting: ${before.navigations}`);

  await step(`${followee} posts with #post-text / #post-button`, async () => {
    await followeePage.locator('#post-text').fill(text);
    await followeePage.locator('#post-button').click();
  });

  const posted = await step(`the API lists ${followee}'s tweet`, () =>
    poll(`no tweet with ${marker} in /api/users/${followee}/tweets`, async () => {
      const r = await api('GET', `/api/users/${followee}/tweets?page_size=20`);
      const tweet = r.json && Array.isArray(r.json.tweets) && r.json.tweets.find((t) => t.text === text);
      return { done: !!tweet, value: tweet, seen: r.text };
    }),
  );
  if (typeof posted.id !== 'string' || !/^[0-9]+$/.test(posted.id)) {
    throw new Error(`tweet id must be a decimal string, got ${JSON.stringify(posted.id)}`);
  }

  const shown = await step(`the tweet appears at the top of ${follower}'s #timeline without a reload`, async () => {
    const handle = await followerPage
      .waitForFunction(
      (marker) => {
        const tweets = [...document.querySelectorAll('#timeline .tweet')];
        const i = tweets.findIndex((t) => (t.querySelector('.tweet-text')?.textContent || '').includes(marker));
        if (i < 0) return false;
        const t = tweets[i];
        return {
          index: i,
          count: tweets.length,
          id: t.getAttribute('data-id'),
          author: t.querySelector('.tweet-author')?.textContent || '',
          text: t.querySelector('.tweet-text')?.textContent || '',
          hasTags: !!t.querySelector('.tweet-tags'),
          hasLike: !!t.querySelector('.like-button'),
          visible: t.checkVisibility(),
        };
      },
      marker,
      { timeout: INNER_MS, polling: 100 },
      )
      .catch(async (e) => {
        const seen = await followerPage
          .evaluate(() => ({
            tweets: document.querySelectorAll('#timeline .tweet').length,
            timeline: (document.querySelector('#timeline')?.innerText || '(no #timeline)').slice(0, 500),
          }))
          .catch(() => 'the page could not be read');
        throw new Error(`${e.message.split('\n')[0]}; #timeline now: ${JSON.stringify(seen)}`);
      });
    return handle.jsonValue();
  });

  await step('the entry is the newest, complete and from the live stream', async () => {
    const wrong = [];
    if (shown.index !== 0) wrong.push(`it is entry ${shown.index} of ${shown.count}, not the first`);
    if (shown.id !== posted.id) wrong.push(`data-id ${shown.id}, API id ${posted.id}`);
    if (!shown.author.includes(followee)) wrong.push(`.tweet-author ${JSON.stringify(shown.author)}`);
    if (!shown.text.includes(text)) wrong.push(`.tweet-text ${JSON.stringify(shown.text)}`);
    if (!shown.hasTags) wrong.push('no .tweet-tags');
    if (!shown.hasLike) wrong.push('no .like-button');
    if (!shown.visible) wrong.push('the entry is not visible');
    const after = await followerPage.evaluate(() => ({
      sentinel: window.__starlingSentinel,
      origin: performance.timeOrigin,
      navigations: performance.getEntriesByType('navigation').length,
      url: location.href,
    }));
    if (after.sentinel !== marker || after.origin !== before.origin) {
      wrong.push(`the page reloaded (sentinel ${after.sentinel}, time origin ${before.origin} -> ${after.origin})`);
    }
    if (after.navigations !== 1) wrong.push(`${after.navigations} navigation entries`);
    if (wrong.length) throw new Error(wrong.join('; '));
  });

  // `starling up` keeps the last traces: the post's is in /traces, and opening it shows
  // the waterfall of every service the post went through.
  const tracesPage = await followeeCtx.newPage();
  tracesPage.setDefaultTimeout(STEP_MS);
  watch(tracesPage, 'traces');
  await step('/traces lists the post and shows its waterfall', async () => {
    await tracesPage.goto(`${base}/traces`);
    const row = tracesPage.locator('#trace-rows tr', { hasText: 'POST /api/tweets' }).first();
    await row.waitFor();
    await row.click();
    await tracesPage.locator('#waterfall .span-row').nth(4).waitFor();
    const services = await tracesPage.$$eval('#waterfall .span-row', (rows) =>
      [...new Set(rows.map((r) => r.dataset.service))].sort(),
    );
    for (const s of ['gateway', 'tweet', 'timeline', 'tagger']) {
      if (!services.includes(s)) throw new Error(`no ${s} span in the waterfall: ${services}`);
    }
    log(`the post's trace in /traces: spans from ${services.join(', ')}`);
  });

  console.log(
    `PASS: ${follower} saw ${followee}'s tweet ${posted.id} live in #timeline ` +
      `(no reload) in ${Date.now() - t0} ms`,
  );
} catch (e) {
  failed = e;
} finally {
  if (SCREENSHOT && followerPage) {
    try {
      await followerPage.screenshot({ path: SCREENSHOT, fullPage: true, timeout: STEP_MS });
      log(`screenshot of ${follower}'s page: ${SCREENSHOT}`);
    } catch (e) {
      console.error(`could not take the screenshot: ${e.message}`);
    }
  }
  if (browser) await browser.close().catch(() => {});
}

if (failed) {
  console.error(`FAIL: ${failed.message}`);
  for (const p of problems) console.error(`  ${p}`);
  process.exitCode = 1;
} else {
  process.exitCode = 0;
}
