// Answers that would pass the message limit: a List of a large store is paginated, an answer with
// more than MAX_DATA bytes becomes an EFBIG error (the peer's decoder would refuse it and close
// the link), a request with more is refused before it is sent, and sizes past the largest object
// are refused before the store sees them.

import t from 'tap'
import crypto from 'node:crypto'
import { SheepError } from '../../src/errors'
import { muxCarrier } from '../../src/swarm/carrier'
import { Link } from '../../src/swarm/link'
import { decode, LIST_PAGE, MAX_DATA, objectList, Op, type Request, type Response } from '../../src/swarm/messages'
import { listAll, MAX_OBJECT_BYTES, replicaHandler } from '../../src/swarm/replica'
import type { ObjectInfo, ObjectStore } from '../../src/objects/types'
import { FakeSecureStream } from '../helpers/hostile'
import { sheepError } from './tmp'
import { waitFor } from '../helpers/daemon'

const EMPTY = new Uint8Array(0)

function req (fields: Partial<Request>): Request {
  return { id: 1, epoch: 1, op: Op.Stat, oid: 0n, offset: 0, length: 0, version: 0, data: EMPTY, ...fields }
}

/** A store of n objects that only lists them (and counts what else it is asked). */
function bigStore (n: number): { store: ObjectStore, touched: string[] } {
  const touched: string[] = []
  const store = new Proxy({}, {
    get (_target, prop) {
      if (prop === 'list') {
        return async function * (from = 0n): AsyncIterable<ObjectInfo> {
          for (let i = Number((from + 1000002n) / 1000003n); i < n; i++) yield { oid: BigInt(i) * 1000003n, version: 2 ** 40 + i, size: 4 * 2 ** 20 }
        }
      }
      return async () => { touched.push(String(prop)); return null }
    }
  }) as ObjectStore
  return { store, touched }
}

/** The member the requests come from. */
const PEER = 'a'.repeat(64)
const ctx = { epoch: () => 1, quorate: () => true, asPrimary: async () => 1, release: async () => {}, isMember: () => true, tokenOf: async () => null }

// The store only lists: 600 000 real objects cost minutes to make here (250 µs each).
t.test('a List of 600 000 objects comes over a link in pages under the message limit, in order, all of them', async t => {
  const n = 600_000
  const { store } = bigStore(n)
  const serve = replicaHandler(store, ctx)
  const { client } = await linkedPair(async r => await serve(r, PEER))
  t.teardown(() => client.close())
  const sizes: number[] = []
  const { entries, refused } = await listAll(async from => {
    const res = await client.call(req({ op: Op.List, oid: from }), 60_000)
    sizes.push(res.data.length)
    return res
  })
  t.equal(refused, null)
  t.equal(entries.length, n, 'every object listed once')
  t.ok(entries.every((e, i) => e.oid === BigInt(i) * 1000003n), 'in oid order')
  t.equal(sizes.length, Math.ceil(n / LIST_PAGE), `${sizes.length} pages`)
  t.ok(sizes.every(s => s <= MAX_DATA), `each page under ${MAX_DATA} bytes (largest ${Math.max(...sizes)})`)
  t.ok(n * 22 > MAX_DATA, 'the whole list in one answer would have passed the limit')
})

t.test('a List page that goes backwards is refused, not followed for ever', async t => {
  const page = (): Response => ({ id: 1, error: '', message: '', epoch: 1, version: 0, size: 1, data: Buffer.from([1, ...Buffer.alloc(8), 1, 1, 0]) })
  let asked = 0
  const err = await sheepError(async () => await listAll(async () => { asked++; return page() }))
  // A page of oid 0 from 0 is not backwards; from 1 it is.
  t.equal(err.code, 'EPROTO')
  t.equal(asked, 2, 'refused at the second page')
  t.equal(decode(objectList, page().data).length, 1)
})

t.test('sizes past the largest object are refused before the store sees them', async t => {
  const { store, touched } = bigStore(0)
  const serve = replicaHandler(store, ctx)
  for (const r of [
    req({ op: Op.Create, length: MAX_OBJECT_BYTES + 1 }),
    req({ op: Op.Truncate, length: 2 ** 52 }),
    req({ op: Op.Write, offset: Number.MAX_SAFE_INTEGER - 3, data: Buffer.alloc(8) }),
    req({ op: Op.Read, offset: 2 ** 50, length: 10 }),
    req({ op: Op.WriteFresh, length: 2 ** 52, data: Buffer.alloc(8) }),
    req({ op: Op.WriteFresh, length: 4096, offset: MAX_OBJECT_BYTES, data: Buffer.alloc(8) })
  ]) {
    const err = await sheepError(async () => await serve(r, PEER))
    t.equal(err.code, 'EFBIG', `op ${r.op}: EFBIG (${err.message})`)
  }
  t.same(touched, [], 'the store was not called')
  const read = await sheepError(async () => await serve(req({ op: Op.Read, length: MAX_DATA + 1 }), PEER))
  t.equal(read.code, 'EINVAL', 'a read of more than MAX_DATA is refused')
})

/** Two links on a pair of in-memory streams, both proven; `full()` true: the server's writes do not drain. */
async function linkedPair (onRequest: (r: Request) => Promise<Partial<Response>>, full = (): boolean => false, logs: string[] = []): Promise<{ client: Link, server: Link }> {
  const secret = crypto.randomBytes(32)
  const hash = crypto.randomBytes(32)
  const ka = crypto.randomBytes(32)
  const kb = crypto.randomBytes(32)
  const a = new FakeSecureStream(kb, hash, true)
  const b = new FakeSecureStream(ka, hash, false)
  a.write = (d: Uint8Array) => { const copy = Buffer.from(d); queueMicrotask(() => b.push(copy)); return true }
  b.write = (d: Uint8Array) => {
    if (full()) return false // the peer reads nothing: what is written stays here
    const copy = Buffer.from(d)
    queueMicrotask(() => a.push(copy))
    return true
  }
  const member = (k: Buffer): { member: { id: string, host: string, port: number, zone: string, weight: number }, view: { epoch: number, members: [] } } =>
    ({ member: { id: k.toString('hex'), host: '127.0.0.1', port: 0, zone: '', weight: 1 }, view: { epoch: 0, members: [] } })
  const client = new Link(muxCarrier(a as never), { kind: 'tcp', secret: () => secret, gate: (_id: string, proves: (s: Buffer) => boolean) => proves(secret) ? null : 'it did not prove it holds the cluster secret', self: () => member(ka), onRequest: async () => ({}), log: () => {} })
  const server = new Link(muxCarrier(b as never), { kind: 'tcp', secret: () => secret, gate: (_id: string, proves: (s: Buffer) => boolean) => proves(secret) ? null : 'it did not prove it holds the cluster secret', self: () => member(kb), onRequest: async r => await onRequest(r), log: line => logs.push(line) })
  await new Promise(resolve => setTimeout(resolve, 10))
  if (!client.isOpen || !server.isOpen) throw new Error('the pair did not open')
  return { client, server }
}

t.test('an answer past the message limit becomes EFBIG; a request past it is refused before sending', async t => {
  const { client } = await linkedPair(async r => ({ data: Buffer.alloc(r.length) }))
  const small = await client.call(req({ op: Op.Read, length: 1000 }), 2000)
  t.equal(small.data.length, 1000, 'a normal answer')
  const big = await client.call(req({ op: Op.Read, length: MAX_DATA + 1 }), 2000)
  t.equal(big.error, 'EFBIG', `an answer of MAX_DATA + 1 bytes: ${big.message}`)
  t.ok(client.isOpen, 'the link stays open')
  const err = await sheepError(async () => await client.call(req({ op: Op.Write, data: Buffer.alloc(MAX_DATA + 1) }), 2000))
  t.equal(err.code, 'EFBIG', 'a request of MAX_DATA + 1 bytes is refused here')
  t.ok(client.isOpen, 'and the link stays open')
  client.close()
  t.ok(err instanceof SheepError)
})

t.test('a peer that asks and never reads its answers is cut off before they fill this node\'s memory', async t => {
  let full = false
  const logs: string[] = []
  const answer = Buffer.alloc(MAX_DATA)
  const { client, server } = await linkedPair(async () => ({ data: answer }), () => full, logs)
  full = true // from now on the connection does not drain
  for (let i = 0; i < 40; i++) client.call(req({ op: Op.Read, length: MAX_DATA }), 5000).catch(() => null)
  t.ok(await waitFor(() => !server.isOpen, 5000), 'the server closed the link')
  client.close()
  t.match(logs.join('\n'), /does not read its answers/, 'with a log line saying why')
})
