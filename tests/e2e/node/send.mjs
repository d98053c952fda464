// Sends identify, track, page, screen, group and alias with the official Segment Node SDK
// to the host given in ENGAGE_API_URL, then flushes. Prints what it sent as JSON.
import { Analytics } from '@segment/analytics-node'

const host = process.env.ENGAGE_API_URL
const writeKey = process.env.ENGAGE_WRITE_KEY
const userId = process.env.ENGAGE_USER_ID
if (!host || !writeKey || !userId) {
  console.error('ENGAGE_API_URL, ENGAGE_WRITE_KEY and ENGAGE_USER_ID are required')
  process.exit(2)
}

const analytics = new Analytics({ writeKey, host, path: '/v1/batch', maxEventsInBatch: 10, flushInterval: 100 })
const errors = []
analytics.on('error', (err) => errors.push(String(err && (err.reason || err.message || err))))

analytics.identify({ userId, traits: { email: `${userId}@node.example`, plan: 'node' } })
analytics.track({ userId, event: 'Node Order Completed', properties: { revenue: 42 } })
analytics.page({ userId, name: 'Pricing', properties: { url: 'https://example.com/pricing' } })
analytics.screen({ userId, name: 'Home' })
analytics.group({ userId, groupId: `${userId}-org`, traits: { name: 'Node Org' } })

await analytics.closeAndFlush({ timeout: 20000 })
if (errors.length) {
  console.error(JSON.stringify({ errors }))
  process.exit(1)
}
console.log(JSON.stringify({ sent: 5, userId }))
