// Browser checks of the examples' pages, run by scripts/browser.sh (which installs
// playwright-core into target/browser and builds the examples first).
//
// Each example binary is started on a free port (ADDR=127.0.0.1:PORT); headless Chromium
// (Debian's, never a downloaded build) opens its page and uses it like a person would. One line
// per check, screenshots in target/browser/, and `browser: N passed, M failed` last.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
const WORK = process.env.BROWSER_WORK || path.join(ROOT, 'target', 'browser');
const CHROMIUM = process.env.BROWSER_CHROMIUM || '/usr/bin/chromium';
const CHECK_TIMEOUT_MS = 1000 * Number(process.env.BROWSER_CHECK_TIMEOUT || 20);
const START_TIMEOUT_MS = 30_000;
const bin = (name, env) =>
  process.env[env] || path.join(ROOT, 'target', 'debug', 'examples', name);

// playwright-core lives in target/browser/node_modules, not next to this file.
const { chromium } = createRequire(path.join(WORK, 'package.json'))('playwright-core');

// Without the background-networking flags Chromium keeps trying to reach Google's hosts, and
// this machine refuses those connections many at a time. Playwright gives the browser a fresh
// temporary --user-data-dir of its own on every launch.
const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
];

const servers = [];
let browser = null;

function log(...args) {
  console.log(...args);
}

async function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function canConnect(port) {
  return new Promise((resolve) => {
    const sock = net.connect({ host: '127.0.0.1', port });
    sock.once('connect', () => {
      sock.destroy();
      resolve(true);
    });
    sock.once('error', () => resolve(false));
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Starts an example binary on a free port and waits until it accepts connections. */
async function startServer(name, exe, fixedPort = null) {
  if (!fs.existsSync(exe)) throw new Error(`${name}: no binary at ${exe}`);
  const port = fixedPort || (await freePort());
  const logPath = path.join(WORK, `${name}.log`);
  const out = fs.openSync(logPath, 'w');
  // Not detached: it stays in this process group, which `timeout` signals as a whole.
  const child = spawn(exe, [], {
    env: { ...process.env, ADDR: `127.0.0.1:${port}`, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1' },
    stdio: ['ignore', out, out],
  });
  fs.closeSync(out);
  const server = { name, exe, child, port, logPath, exited: null };
  child.on('exit', (code, signal) => {
    server.exited = signal || `exit ${code}`;
  });
  servers.push(server);
  const deadline = Date.now() + START_TIMEOUT_MS;
  while (!(await canConnect(port))) {
    if (server.exited) throw new Error(`${name} exited (${server.exited}) before it listened; see ${logPath}`);
    if (Date.now() > deadline) throw new Error(`${name} did not listen on ${port} within ${START_TIMEOUT_MS / 1000} s`);
    await sleep(100);
  }
  server.url = `http://127.0.0.1:${port}`;
  return server;
}

async function stopServer(server) {
  if (server.exited) return;
  server.child.kill('SIGTERM');
  for (let i = 0; i < 50 && !server.exited; i++) await sleep(100);
  if (!server.exited) server.child.kill('SIGKILL');
}

/** Stops a server and starts its binary again on the same port, in place: `server` then
 * stands for the new process. */
async function restartServer(server) {
  await stopServer(server);
  const fresh = await startServer(`${server.name}-restarted`, server.exe, server.port);
  Object.assign(server, { child: fresh.child, logPath: fresh.logPath, exited: null });
  fresh.child.on('exit', (code, signal) => {
    server.exited = signal || `exit ${code}`;
  });
}

function killServersNow() {
  for (const s of servers) {
    if (!s.exited) {
      try {
        s.child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
  }
}

function serverLogTail(server, lines = 20) {
  try {
    return fs.readFileSync(server.logPath, 'utf8').trimEnd().split('\n').slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** A new browser context whose page errors and console errors are collected in
 * `run.problems`; `run.contexts` keeps it so a check that times out can be torn down. */
async function newPage(run, label) {
  const { problems } = run;
  const context = await browser.newContext({ viewport: { width: 900, height: 700 } });
  run.contexts.push(context);
  const page = await context.newPage();
  page.setDefaultTimeout(10_000);
  page.on('pageerror', (e) => problems.push(`${label}: page error: ${e.message}`));
  page.on('console', (m) => {
    // The pages have no favicon: its 404 is no problem.
    const url = m.location()?.url || '';
    if (m.type() === 'error' && !url.endsWith('/favicon.ico')) {
      problems.push(`${label}: console error: ${m.text()} ${url}`);
    }
  });
  page.on('requestfailed', (r) => problems.push(`${label}: request failed: ${r.url()} ${r.failure()?.errorText}`));
  return { context, page };
}

function assert(cond, message) {
  if (!cond) throw new Error(message);
}

function withTimeout(promise, ms, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} took more than ${ms / 1000} s`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

// ---------------------------------------------------------------------------------------------
// The checks. Each gets its server and `run` (for newPage); it throws on failure.

/** Two people in two browsers: A's message, typed and sent with the page's own controls,
 * reaches B (and comes back to A). */
async function checkChat(server, run) {
  const a = await newPage(run, 'alice');
  const b = await newPage(run, 'bob');
  try {
    for (const [p, name] of [
      [a.page, 'alice'],
      [b.page, 'bob'],
    ]) {
      await p.goto(server.url + '/');
      await p.fill('#name', name);
      await p.click('#join');
      await p.waitForSelector('#chat:not([hidden])');
      await p.waitForFunction(() => document.querySelector('#status')?.dataset.state === 'open');
    }
    // Both see bob join, and the count of people online.
    await a.page.waitForFunction(() => document.querySelector('#log').textContent.includes('bob joined'));
    await b.page.waitForFunction(() => /2 online/.test(document.querySelector('#online').textContent));

    const text = `hello from alice ${Date.now()}`;
    await a.page.fill('#text', text);
    await a.page.click('#send');
    const seen = (t) =>
      [...document.querySelectorAll('#log .msg')].some(
        (m) => m.querySelector('.from')?.textContent === 'alice' && m.querySelector('.text')?.textContent === t,
      );
    await b.page.waitForFunction(seen, text);
    await a.page.waitForFunction(seen, text);
    assert((await a.page.inputValue('#text')) === '', 'the input is cleared after sending');

    // And back: bob answers, alice sees it.
    await b.page.fill('#text', 'hi alice');
    await b.page.press('#text', 'Enter');
    await a.page.waitForFunction(() =>
      [...document.querySelectorAll('#log .msg')].some((m) => m.querySelector('.text')?.textContent === 'hi alice'),
    );

    // Bob leaves; alice is told.
    await b.context.close();
    await a.page.waitForFunction(() => document.querySelector('#log').textContent.includes('bob left'));
    await a.page.waitForFunction(() => /1 online/.test(document.querySelector('#online').textContent));
    await a.page.screenshot({ path: path.join(WORK, 'chat.png') });
  } finally {
    await a.context.close().catch(() => {});
    await b.context.close().catch(() => {});
  }
}

/** The page receives the pushed points and draws them. */
async function checkLivePlot(server, run) {
  const { context, page } = await newPage(run, 'live_plot');
  try {
    await page.goto(server.url + '/');
    await page.waitForFunction(() => document.querySelector('#status')?.dataset.state === 'open');
    const start = Date.now();
    await page.waitForFunction(() => (window.pointsReceived || 0) > 10, null, { timeout: 3_000 });
    const first = await page.evaluate(() => window.pointsReceived);
    log(`  live_plot: ${first} points within ${Date.now() - start} ms of connecting`);
    await sleep(1_000);
    const later = await page.evaluate(() => window.pointsReceived);
    assert(later >= first + 5, `points keep coming (${first} then ${later} a second later)`);
    // The series is drawn: count the pixels in the line's colour.
    const pixels = await page.evaluate(() => {
      const canvas = document.querySelector('#plot');
      const ctx = canvas.getContext('2d');
      const { data } = ctx.getImageData(0, 0, canvas.width, canvas.height);
      let line = 0;
      let nonBackground = 0;
      for (let i = 0; i < data.length; i += 4) {
        const [r, g, bl] = [data[i], data[i + 1], data[i + 2]];
        if (r < 240 || g < 240 || bl < 240) nonBackground++;
        if (bl > 180 && r < 120 && g < 170) line++;
      }
      return { line, nonBackground, width: canvas.width, height: canvas.height };
    });
    log(`  live_plot: canvas ${pixels.width}x${pixels.height}, ${pixels.nonBackground} non-background pixels, ${pixels.line} in the line's colour`);
    assert(pixels.nonBackground > 0, 'the canvas is blank');
    assert(pixels.line > 100, `the series is not drawn (${pixels.line} pixels in its colour)`);
    await page.screenshot({ path: path.join(WORK, 'live_plot.png') });

    // The socket is lost for 1.5 s (about 15 points): the page resumes after the last point it
    // drew and gets the missed ones at once, then the live ones, with no gap and no duplicate.
    const before = await page.evaluate(() => ({ n: window.pointsReceived, offset: window.lastOffset }));
    await page.evaluate(() => window.dropSocket(1_500));
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'closed');
    await page.waitForFunction(() => document.querySelector('#status').dataset.state === 'open', null, { timeout: 5_000 });
    await sleep(400);
    const after = await page.evaluate(() => ({
      n: window.pointsReceived, offset: window.lastOffset, gaps: window.gaps,
      duplicates: window.duplicates, resumes: window.resumes, resyncs: window.resyncs,
    }));
    log(`  live_plot: dropped at offset ${before.offset}, resumed, ${after.n - before.n} points within 400 ms of reopening, now at ${after.offset}; ${after.gaps} gaps, ${after.duplicates} duplicates`);
    assert(after.resumes >= 1 && after.resyncs === 0, `the page did not resume (${JSON.stringify(after)})`);
    assert(after.n - before.n >= 14, `the missed points were not filled in (${after.n - before.n} points after reopening)`);
    assert(after.offset === before.offset + (after.n - before.n), `offsets and points disagree (${JSON.stringify({ before, after })})`);
    assert(after.gaps === 0 && after.duplicates === 0, `${after.gaps} points missing, ${after.duplicates} twice`);

    // The server restarts: its history is gone (a new epoch), so the page is told to resync,
    // forgets its points and draws the new server's series, again with no gap.
    await restartServer(server);
    await page.waitForFunction(() => window.resyncs >= 1, null, { timeout: 5_000 });
    const fresh = await page.evaluate(() => window.pointsReceived);
    await sleep(600);
    const restarted = await page.evaluate(() => ({
      n: window.pointsReceived, gaps: window.gaps, duplicates: window.duplicates, resyncs: window.resyncs,
    }));
    log(`  live_plot: server restarted, the page resynced; ${restarted.n - fresh} points in the next 600 ms, ${restarted.gaps} gaps, ${restarted.duplicates} duplicates`);
    assert(restarted.n - fresh >= 3, `no points after the restart (${restarted.n - fresh})`);
    assert(restarted.gaps === 0 && restarted.duplicates === 0, `after the restart: ${restarted.gaps} points missing, ${restarted.duplicates} twice`);

    // A second page joining later starts with the recent history, then gets the same points.
    const second = await newPage(run, 'live_plot (second page)');
    try {
      await second.page.goto(server.url + '/');
      // Ten points would take a second live: within 800 ms they are the history.
      await second.page.waitForFunction(() => window.pointsReceived >= 10, null, { timeout: 800 });
      const lastPoint = () => document.querySelector('#last').textContent;
      // Both pages show the same latest point once neither has a message in flight.
      let same = false;
      for (let i = 0; i < 20 && !same; i++) {
        same = (await page.evaluate(lastPoint)) === (await second.page.evaluate(lastPoint));
        if (!same) await sleep(30);
      }
      assert(same, 'two pages show different latest points');
    } finally {
      await second.context.close().catch(() => {});
    }
  } finally {
    await context.close().catch(() => {});
  }
}

/** The echo page connects, sends what is typed and shows it echoed. */
async function checkEcho(server, run) {
  const { context, page } = await newPage(run, 'echo');
  try {
    await page.goto(server.url + '/');
    await page.waitForFunction(() => document.querySelector('#status')?.textContent === 'connected');
    const text = `echo me ${Date.now()}`;
    await page.fill('#text', text);
    await page.click('form button');
    await page.waitForFunction(
      (t) => [...document.querySelectorAll('#log .echo')].some((p) => p.textContent === 'echo: ' + t),
      text,
    );
    await page.screenshot({ path: path.join(WORK, 'echo.png') });
  } finally {
    await context.close().catch(() => {});
  }
}

const CHECKS = [
  { name: 'chat', example: 'chat', env: 'BROWSER_CHAT_BIN', run: checkChat },
  { name: 'live_plot', example: 'live_plot', env: 'BROWSER_LIVE_PLOT_BIN', run: checkLivePlot },
  { name: 'echo', example: 'echo', env: 'BROWSER_ECHO_BIN', run: checkEcho },
];

// ---------------------------------------------------------------------------------------------

async function cleanup() {
  killServersNow();
  if (browser) await browser.close().catch(() => {});
  browser = null;
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) {
  process.on(sig, () => {
    log(`browser: interrupted by ${sig}`);
    killServersNow();
    const b = browser;
    browser = null;
    Promise.resolve(b && b.close())
      .catch(() => {})
      .finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}
process.on('exit', killServersNow);

async function main() {
  fs.mkdirSync(WORK, { recursive: true });
  const only = (process.env.BROWSER_ONLY || '').split(',').filter(Boolean);
  const checks = CHECKS.filter((c) => only.length === 0 || only.includes(c.name));
  let passed = 0;
  let failed = 0;
  try {
    const t0 = Date.now();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: CHROMIUM_ARGS,
      timeout: 30_000,
      // The browser is ended by us; Playwright's own signal handlers would race ours.
      handleSIGINT: false,
      handleSIGTERM: false,
      handleSIGHUP: false,
    });
    log(`browser: Chromium ${browser.version()} (${CHROMIUM}) started in ${Date.now() - t0} ms`);
  } catch (e) {
    log(`FAIL - launch ${CHROMIUM}: ${e.message}`);
    log(`browser: 0 passed, ${checks.length} failed`);
    await cleanup();
    return 1;
  }

  for (const check of checks) {
    const t0 = Date.now();
    const problems = [];
    const run = { problems, contexts: [] };
    let server = null;
    try {
      server = await startServer(check.example, bin(check.example, check.env));
      await withTimeout(check.run(server, run), CHECK_TIMEOUT_MS, check.name);
      if (server.exited) throw new Error(`the server exited during the check (${server.exited})`);
      const errors = problems.filter((p) => p.includes('page error'));
      if (errors.length) throw new Error(`the page threw: ${errors[0]}`);
      passed++;
      log(`ok - ${check.name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
    } catch (e) {
      failed++;
      log(`FAIL - ${check.name} (${((Date.now() - t0) / 1000).toFixed(1)} s): ${e.message.split('\n')[0]}`);
      if (e.message.includes('\n')) log(e.message.split('\n').slice(1, 12).map((l) => '    ' + l).join('\n'));
      if (server) log(`  server log (${server.logPath}):\n${serverLogTail(server).replace(/^/gm, '    ')}`);
    } finally {
      // A check that timed out may still hold pages: closing them ends its pending steps.
      await Promise.all(run.contexts.map((c) => c.close().catch(() => {})));
      for (const p of problems) log(`  ${check.name}: ${p}`);
      if (server) await stopServer(server);
    }
  }
  await cleanup();
  log(`browser: ${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  async (e) => {
    log(`browser: ${e.stack || e}`);
    await cleanup();
    log('browser: 0 passed, 1 failed');
    process.exit(1);
  },
);
