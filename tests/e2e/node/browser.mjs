// analytics.js (@segment/analytics-next, from this folder's node_modules) in a real headless Chromium,
// sending to the API at ENGAGE_API_URL: page, identify and track with the default (standard) delivery,
// then two tracks with the batching delivery (one POST to /v1/b). No CDN: the page loads the package's
// own browser bundle (dist/umd/index.js) from a local page server on another port (so every API call
// is cross-origin, with CORS), and gives analytics.js its settings inline (cdnSettings).
// Prints one JSON line: every request the page made (method, URL, status, headers) and any page error.
import { createServer } from 'node:http'
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { dirname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const here = dirname(fileURLToPath(import.meta.url))
const apiUrl = process.env.ENGAGE_API_URL
const writeKey = process.env.ENGAGE_WRITE_KEY
const userId = process.env.ENGAGE_USER_ID
const executablePath = process.env.CHROMIUM || '/usr/bin/chromium'
if (!apiUrl || !writeKey || !userId) {
  console.error('ENGAGE_API_URL, ENGAGE_WRITE_KEY and ENGAGE_USER_ID are required')
  process.exit(2)
}
if (!existsSync(executablePath)) {
  console.error(`no Chromium at ${executablePath}: run make e2e-deps (apt-get install chromium)`)
  process.exit(3)
}
const bundleDir = join(here, 'node_modules', '@segment', 'analytics-next', 'dist', 'umd')
const page = `<!doctype html><html><head><title>Engage shop</title>
<script src="/analytics-next/bundles/index.js"></script></head><body><h1>Shop</h1></body></html>`

// The page server: the page itself and the package's UMD bundle (and its lazy chunks, at the path
// the bundle asks for them). Nothing else is served, and nothing is fetched from the internet.
const server = createServer((req, res) => {
  const path = new URL(req.url, 'http://x').pathname
  if (path === '/' || path === '/shop.html') {
    res.writeHead(200, { 'content-type': 'text/html' }).end(page)
    return
  }
  const prefix = '/analytics-next/bundles/'
  const file = path.startsWith(prefix) ? normalize(join(bundleDir, path.slice(prefix.length))) : null
  if (file && file.startsWith(bundleDir) && existsSync(file)) {
    res.writeHead(200, { 'content-type': 'application/javascript' }).end(readFileSync(file))
    return
  }
  res.writeHead(404).end()
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const pageOrigin = `http://127.0.0.1:${server.address().port}`

const userDataDir = mkdtempSync(join(tmpdir(), 'engage-chromium-'))
const flags = ['--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
  '--disable-component-update', '--disable-sync']
const requests = []
const pageErrors = []
let context
try {
  // A persistent context is Chromium started with --user-data-dir (fresh, ours); chromiumSandbox: false
  // adds --no-sandbox (CI runs as root); headless adds --headless.
  context = await chromium.launchPersistentContext(userDataDir, {
    executablePath, headless: true, chromiumSandbox: false, args: flags, timeout: 60000,
  })
  context.on('request', (request) => requests.push({
    method: request.method(), url: request.url(), headers: request.headers(), status: null,
  }))
  context.on('requestfinished', async (request) => {
    const entry = requests.findLast((r) => r.url === request.url() && r.method === request.method() &&
      r.status === null)
    const response = await request.response()
    if (entry && response) {
      entry.status = response.status()
      entry.responseHeaders = await response.allHeaders()
    }
  })
  context.on('requestfailed', (request) => {
    const entry = requests.findLast((r) => r.url === request.url() && r.status === null)
    if (entry) entry.failure = request.failure()?.errorText || 'failed'
  })
  const apiHost = apiUrl.replace(/^https?:\/\//, '') + '/v1'

  async function run (strategy, calls) {
    const tab = await context.newPage()
    tab.on('pageerror', (error) => pageErrors.push(String(error)))
    await tab.goto(`${pageOrigin}/shop.html`)
    // The batch is posted as soon as it is full, maybe before evaluate returns: listen first.
    const batchPosted = strategy === 'batching'
      ? tab.waitForResponse((r) => r.url().endsWith('/v1/b') && r.request().method() === 'POST',
        { timeout: 30000 })
      : null
    const result = await tab.evaluate(async ({ writeKey, apiHost, userId, strategy, calls }) => {
      const segment = { apiKey: writeKey, apiHost, protocol: 'http' }
      if (strategy === 'batching') segment.deliveryStrategy = { strategy: 'batching', config: { size: calls.length, timeout: 1000 } }
      const [analytics] = await window.AnalyticsNext.AnalyticsBrowser.load(
        // What Segment's CDN would serve as the source's settings, given inline.
        { writeKey, cdnSettings: { integrations: { 'Segment.io': segment } } },
        // The same host for the Segment.io plugin and analytics.js's own metrics (never api.segment.io).
        { integrations: { 'Segment.io': { apiHost, protocol: 'http' } } })
      const sent = []
      for (const [call, ...args] of calls) {
        const ctx = await analytics[call](...args.map((a) => (a === '$user' ? userId : a)))
        sent.push({ call, type: ctx.event.type, messageId: ctx.event.messageId })
      }
      // The page's own script can read the API's answers only if CORS allowed them: a request like
      // analytics.js's, with a body that is refused (400) so it stores nothing.
      const probe = await fetch(`http://${apiHost}/t?cors-probe`, {
        method: 'POST', body: '{}',
        headers: { 'Content-Type': 'text/plain', Authorization: `Basic ${btoa(writeKey + ':')}` },
      }).then(async (r) => ({ status: r.status, code: (await r.json()).code }),
        (error) => ({ error: String(error) }))
      return { sent, probe, anonymousId: analytics.user().anonymousId(), userId: analytics.user().id() }
    }, { writeKey, apiHost, userId, strategy, calls })
    if (batchPosted) await batchPosted
    // Let in-flight requests finish before the tab goes.
    await tab.waitForLoadState('networkidle')
    await tab.close()
    return result
  }

  const standard = await run('standard', [
    ['page', 'Shop', { section: 'home' }],
    ['identify', '$user', { email: `${userId}@browser.example`, plan: 'browser' }],
    ['track', 'Browser Order Completed', { revenue: 42 }],
  ])
  const batched = await run('batching', [
    ['track', 'Browser Batched', { n: 1 }],
    ['track', 'Browser Batched', { n: 2 }],
  ])
  console.log(JSON.stringify({ pageOrigin, standard, batched, requests, pageErrors }))
} finally {
  if (context) await context.close()
  server.close()
  rmSync(userDataDir, { recursive: true, force: true })
}
