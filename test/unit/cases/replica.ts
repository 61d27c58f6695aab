// The replica side of the peer protocol (src/swarm/replica.ts) over a real local store: requests
// from another epoch, without a majority, from a node that is not a member, of unknown kinds or
// naming the wrong object are refused with their own error and change nothing; changes to an
// image's objects are taken only from its token's holder; a release of a write token reaches the
// images; a replace that names a version makes the replica record that one.

import t from 'tap'
import { LocalObjectStore } from '../../../src/objects/local-store'
import { dataOid, inodeOid, metaOid, tokenOid } from '../../../src/objects/oid'
import { Op, type Request, type TokenRecord } from '../../../src/swarm/messages'
import { replicaHandler } from '../../../src/swarm/replica'
import type { TokenPurpose } from '../../../src/cow/tokens'
import { sheepError, tmpDir } from '../tmp'

const PEER = 'a'.repeat(64)
const STRANGER = 'b'.repeat(64)
const OTHER = 'c'.repeat(64)

t.test('the replica handler checks epoch, majority, operation and object before it acts', async t => {
  const store = new LocalObjectStore(tmpDir(t))
  await store.open()
  t.teardown(async () => await store.close())
  let quorate = true
  const released: Array<[number, TokenPurpose]> = []
  const serve = replicaHandler(store, {
    epoch: () => 5,
    quorate: () => quorate,
    asPrimary: async () => { throw new Error('not used') },
    release: async (vid, purpose) => { released.push([vid, purpose]) },
    isMember: id => id === PEER,
    tokenOf: async () => null
  })
  const req = (fields: Partial<Request>): Request => ({ id: 1, epoch: 5, op: Op.Stat, oid: dataOid(1, 0), offset: 0, length: 0, version: 0, data: new Uint8Array(0), ...fields })

  t.equal((await sheepError(async () => await serve(req({ op: Op.Create, length: 4096, epoch: 4 }), PEER))).code, 'ESTALE', 'another epoch')
  quorate = false
  t.equal((await sheepError(async () => await serve(req({ op: Op.Create, length: 4096 }), PEER))).code, 'ENOTCONN', 'no majority')
  quorate = true
  t.equal((await sheepError(async () => await serve(req({ op: Op.Create, length: 4096 }), STRANGER))).code, 'EPERM', 'a node that is not a member')
  t.equal((await sheepError(async () => await serve(req({ op: Op.Stat }), STRANGER))).code, 'EPERM', 'not even a read')
  t.equal(await store.stat(dataOid(1, 0)), null, 'none created the object')
  t.equal((await sheepError(async () => await serve(req({ op: 99 as Op }), PEER))).code, 'EPROTO', 'an unknown operation')

  t.equal((await sheepError(async () => await serve(req({ op: Op.Release, oid: inodeOid(7) }), PEER))).code, 'EINVAL', 'a release of an object that is not a token')
  await serve(req({ op: Op.Release, oid: tokenOid(7), version: 0 }), PEER)
  await serve(req({ op: Op.Release, oid: tokenOid(0xabcdef), version: 1 }), PEER)
  t.same(released, [[7, 'io'], [0xabcdef, 'change']], 'releases reach the images with the vid and purpose')
})

t.test('a replace naming a version records that version, whatever the replica counted; one naming none counts on', async t => {
  const store = new LocalObjectStore(tmpDir(t))
  await store.open()
  t.teardown(async () => await store.close())
  const serve = replicaHandler(store, {
    epoch: () => 1,
    quorate: () => true,
    asPrimary: async () => { throw new Error('not used') },
    release: async () => {},
    isMember: () => true,
    tokenOf: async () => null
  })
  const oid = metaOid(3)
  const replace = async (text: string, version: number): Promise<void> => {
    await serve({ id: 1, epoch: 1, op: Op.Replace, oid, offset: 0, length: 0, version, data: Buffer.from(text) }, PEER)
  }
  await replace('a', 0)
  await replace('b', 0)
  await replace('c', 0) // this replica is now one ahead of a primary at version 2
  t.equal((await store.stat(oid))?.version, 3, 'no version given: its own count')
  await replace('d', 3)
  t.same({ version: (await store.stat(oid))?.version, bytes: (await store.readAll(oid)).toString() }, { version: 3, bytes: 'd' }, 'the primary\'s version, not its count plus one')
  await replace('e', 0)
  t.equal((await store.stat(oid))?.version, 4, 'and counts on from there')
})

t.test('changes to an image\'s data and inode objects are taken only from its token\'s holder, looked up once per epoch and when it moved', async t => {
  const store = new LocalObjectStore(tmpDir(t))
  await store.open()
  t.teardown(async () => await store.close())
  let epoch = 1
  const tokens = new Map<number, TokenRecord>([[7, { holder: PEER, generation: 1, deleted: false }]])
  let lookups = 0
  const serve = replicaHandler(store, {
    epoch: () => epoch,
    quorate: () => true,
    asPrimary: async () => 1,
    release: async () => {},
    isMember: () => true,
    tokenOf: async vid => { lookups++; return tokens.get(vid) ?? null }
  })
  const req = (fields: Partial<Request>): Request => ({ id: 1, epoch, op: Op.Write, oid: dataOid(7, 0), offset: 0, length: 0, version: 0, data: Buffer.from('guest'), ...fields })
  await serve(req({ op: Op.Create, length: 4096 }), PEER)
  await serve(req({}), PEER)
  t.equal(lookups, 1, 'the holder is looked up once for its writes in an epoch')
  for (const [what, r] of [['write', req({ data: Buffer.from('evil!') })], ['truncate', req({ op: Op.Truncate, length: 0 })], ['remove', req({ op: Op.Remove })],
    ['replace', req({ op: Op.Replace, data: Buffer.from('evil!') })], ['inode write', req({ oid: inodeOid(7) })],
    ['first write of a block', req({ op: Op.WriteFresh, length: 4096, data: Buffer.from('evil!') })]] as const) {
    const err = await sheepError(async () => await serve(r, OTHER))
    t.equal(err.code, 'EPERM', `another member's ${what}: EPERM`)
    t.match(err.message, /whose write token node aaaaaaaa/, 'the message names the holder')
  }
  t.equal((await store.readAll(dataOid(7, 0))).subarray(0, 5).toString(), 'guest', 'the holder\'s bytes are untouched')
  t.equal((await sheepError(async () => await serve(req({ op: Op.CompareReplace, data: Buffer.from('evil!') }), OTHER))).code, 'EINVAL', 'a compare-and-replace of a data object, which would go out as the primary\'s')
  // The token moves to OTHER (it asked the holder to let go): OTHER's writes are taken, PEER's are not.
  tokens.set(7, { holder: OTHER, generation: 2, deleted: false })
  await serve(req({ data: Buffer.from('moved') }), OTHER)
  t.equal((await sheepError(async () => await serve(req({}), PEER))).code, 'EPERM', 'the former holder is refused once the token moved')
  epoch = 2
  const before = lookups
  await serve(req({ data: Buffer.from('again') }), OTHER)
  t.equal(lookups, before + 1, 'a new epoch looks the holder up again')
  await serve(req({ oid: inodeOid(8), op: Op.Create, length: 4096 }), STRANGER)
  t.pass('an image no host took the token of: any member writes its inode (its creator does)')
  t.equal((await sheepError(async () => await serve(req({ oid: dataOid(8, 0), op: Op.Create, length: 4096 }), STRANGER))).code, 'EPERM', 'but not its data, which only a token holder writes')
  await serve(req({ oid: metaOid(1), op: Op.Replace, data: Buffer.from('dir') }), OTHER)
  t.pass('records every host shares (the directory) are not an image\'s')
})
