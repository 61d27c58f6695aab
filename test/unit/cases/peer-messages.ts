// The peer protocol's codecs (src/swarm/messages.ts): every message round-trips, and truncated,
// oversized or malformed input is refused before anything is allocated for it.

import t from 'tap'
import c from 'compact-encoding'
import { agreement, decode, encode, hello, MAX_DATA, MAX_MEMBERS, objectList, Op, request, response, tokenRecord, usage, view } from '../../../src/swarm/messages'
import type { AgreementMessage } from '../../../src/swarm/view-agreement'
import type { Member, View } from '../../../src/swarm/view'

const id = (n: number): string => n.toString(16).padStart(64, '0')
const member = (n: number): Member => ({ id: id(n), host: '127.0.0.1', port: 4000 + n, zone: n % 2 === 0 ? '' : 'rack-a', weight: 250 + n })
const aView: View = { epoch: 7, members: [member(1), member(2), member(3)] }

t.test('every message round-trips', async t => {
  const req = { id: 9, epoch: 7, op: Op.Write, oid: 0x1000000200000003n, offset: 4096, length: 0, version: 0, data: Buffer.from('abc') }
  const back = decode(request, encode(request, req))
  t.same({ ...back, data: Buffer.from(back.data) }, req, 'request')
  t.equal(back.oid, req.oid, 'a 64-bit object id survives exactly')
  const res = { id: 9, error: 'ENOENT', message: 'object 1 does not exist', epoch: 7, version: 3, size: 5, data: Buffer.alloc(0) }
  const r = decode(response, encode(response, res))
  t.same({ ...r, data: Buffer.from(r.data) }, res, 'response')
  t.same(decode(view, encode(view, aView)), aView, 'view')
  const h = { proof: Buffer.alloc(32, 7), self: member(5), view: aView }
  const hb = decode(hello, encode(hello, h))
  t.same({ ...hb, proof: Buffer.from(hb.proof) }, h, 'hello')
  const list = [{ oid: 1n, version: 2, size: 3 }, { oid: 0x2000000000000001n, version: 9, size: 4 << 20, uncertain: true }, { oid: 5n, version: 10, size: 0, removed: true }, { oid: 6n, version: 11, size: 5, behind: true }]
  t.same(decode(objectList, encode(objectList, list)), list, 'object list, with an uncertain copy, a tombstone and a copy known to be behind')
  const flagged = Buffer.from(encode(objectList, [{ oid: 1n, version: 2, size: 3 }]))
  for (const flags of [3, 5, 6, 8]) {
    flagged[flagged.length - 1] = flags
    t.throws(() => decode(objectList, flagged), { code: 'EPROTO' }, `an entry with flags ${flags} (unknown, or two at once) is refused`)
  }
  t.same(decode(usage, encode(usage, { capacity: 2 ** 40, free: 2 ** 39 })), { capacity: 2 ** 40, free: 2 ** 39 }, 'usage')
  for (const deleted of [false, true]) {
    const record = { holder: id(4), generation: 2 ** 40, deleted }
    t.same(decode(tokenRecord, encode(tokenRecord, record)), record, `token record (deleted: ${String(deleted)})`)
  }
  const ballot = { round: 3, proposer: id(2) }
  const messages: AgreementMessage[] = [
    { type: 'prepare', epoch: 8, ballot },
    { type: 'promise', epoch: 8, ballot, accepted: null },
    { type: 'promise', epoch: 8, ballot, accepted: { ballot: { round: 2, proposer: id(1) }, view: aView } },
    { type: 'accept', epoch: 8, ballot, view: aView },
    { type: 'accepted', epoch: 8, ballot, signature: 'ab'.repeat(64) },
    { type: 'nack', epoch: 8, ballot, promised: { round: 4, proposer: id(3) } },
    { type: 'decided', view: aView, certificate: null },
    { type: 'decided', view: { ...aView, removed: [id(7), id(8)], manual: true }, certificate: { ballot, votes: [{ voter: id(1), signature: 'cd'.repeat(64) }] } },
    { type: 'query', epoch: 0 },
    { type: 'query', epoch: 9 }
  ]
  for (const m of messages) t.same(decode(agreement, encode(agreement, m)), m, `agreement ${m.type}`)
})

t.test('truncated, trailing, oversized and malformed input is refused', async t => {
  const req = encode(request, { id: 1, epoch: 1, op: Op.Read, oid: 5n, offset: 0, length: 10, version: 0, data: Buffer.alloc(0) })
  for (let n = 0; n < req.length; n++) t.throws(() => decode(request, req.subarray(0, n)), `a request cut at byte ${n}`)
  t.throws(() => decode(request, Buffer.concat([req, Buffer.from([0])])), /left over/, 'trailing bytes')
  // A data field that claims more than MAX_DATA: refused from its length prefix alone.
  const big = c.encode(c.uint, MAX_DATA + 1)
  const head = encode(request, { id: 1, epoch: 1, op: Op.Write, oid: 5n, offset: 0, length: 0, version: 0, data: Buffer.alloc(0) }).subarray(0, -1)
  t.throws(() => decode(request, Buffer.concat([head, big, Buffer.alloc(16)])), 'data longer than MAX_DATA')
  // A view that claims more members than allowed, with no members behind the count.
  t.throws(() => decode(view, Buffer.concat([c.encode(c.uint, 3), c.encode(c.uint, MAX_MEMBERS + 1)])), /more than/, 'too many members')
  const badId = { ...aView, members: [{ ...member(1), id: 'not-hex' }] }
  t.throws(() => decode(view, encode(view, badId)), /64 hex digits/, 'a node id that is not 64 hex digits')
  const longZone = { ...aView, members: [{ ...member(1), zone: 'z'.repeat(1025) }] }
  t.throws(() => decode(view, encode(view, longZone)), /more than 1024/, 'a string longer than 1024 characters')
  t.throws(() => decode(agreement, Buffer.from([42])), /unknown agreement message type/, 'an unknown agreement type')
  const token = encode(tokenRecord, { holder: id(4), generation: 7, deleted: false })
  for (let n = 0; n < token.length; n++) t.throws(() => decode(tokenRecord, token.subarray(0, n)), `a token record cut at byte ${n}`)
  t.throws(() => decode(tokenRecord, encode(tokenRecord, { holder: 'someone', generation: 1, deleted: false })), /64 hex digits/, 'a token holder that is not a node id')
})
