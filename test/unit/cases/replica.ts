// The replica side of the peer protocol (src/swarm/replica.ts) over a real local store: requests
// from another epoch, without a majority, of unknown kinds or naming the wrong object are refused
// with their own error and change nothing; a release of a write token reaches the images; a
// replace that names a version makes the replica record that one.

import t from 'tap'
import { LocalObjectStore } from '../../../src/objects/local-store'
import { dataOid, inodeOid, metaOid, tokenOid } from '../../../src/objects/oid'
import { Op, type Request } from '../../../src/swarm/messages'
import { replicaHandler } from '../../../src/swarm/replica'
import type { TokenPurpose } from '../../../src/cow/tokens'
import { sheepError, tmpDir } from '../tmp'

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
    release: async (vid, purpose) => { released.push([vid, purpose]) }
  })
  const req = (fields: Partial<Request>): Request => ({ id: 1, epoch: 5, op: Op.Stat, oid: dataOid(1, 0), offset: 0, length: 0, version: 0, data: new Uint8Array(0), ...fields })

  t.equal((await sheepError(async () => await serve(req({ op: Op.Create, length: 4096, epoch: 4 })))).code, 'ESTALE', 'another epoch')
  quorate = false
  t.equal((await sheepError(async () => await serve(req({ op: Op.Create, length: 4096 })))).code, 'ENOTCONN', 'no majority')
  quorate = true
  t.equal(await store.stat(dataOid(1, 0)), null, 'neither created the object')
  t.equal((await sheepError(async () => await serve(req({ op: 99 as Op })))).code, 'EPROTO', 'an unknown operation')

  t.equal((await sheepError(async () => await serve(req({ op: Op.Release, oid: inodeOid(7) })))).code, 'EINVAL', 'a release of an object that is not a token')
  await serve(req({ op: Op.Release, oid: tokenOid(7), version: 0 }))
  await serve(req({ op: Op.Release, oid: tokenOid(0xabcdef), version: 1 }))
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
    release: async () => {}
  })
  const oid = metaOid(3)
  const replace = async (text: string, version: number): Promise<void> => {
    await serve({ id: 1, epoch: 1, op: Op.Replace, oid, offset: 0, length: 0, version, data: Buffer.from(text) })
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
