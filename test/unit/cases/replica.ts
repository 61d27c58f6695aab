// The replica side of the peer protocol (src/swarm/replica.ts) over a real local store: requests
// from another epoch, without a majority, of unknown kinds or naming the wrong object are refused
// with their own error and change nothing; a release of a write token reaches the images.

import t from 'tap'
import { LocalObjectStore } from '../../../src/objects/local-store'
import { dataOid, inodeOid, tokenOid } from '../../../src/objects/oid'
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
