// ObjectStore.writeFresh for a store whose own create, truncate and write do each step (a local
// store; see ./types.ts for what it promises).

import { SheepError } from '../errors'
import type { ObjectId } from './oid'
import type { ObjectStore } from './types'

export async function writeFreshBySteps (store: ObjectStore, oid: ObjectId, size: number, offset: number, data: Uint8Array): Promise<void> {
  try {
    await store.create(oid, size)
  } catch (err) {
    if (!(err instanceof SheepError && err.code === 'EEXIST')) throw err
    // Bytes a dead writer left must not show around the new ones: the whole object is replaced
    // at once. Cut to 0 and grown back in two steps, a crash between left a shorter object at a
    // newer version, which recovery could take as the newest copy and give every replica (found
    // by the replication simulator: the block then failed its reads past the short end).
    const whole = Buffer.alloc(Math.max(size, offset + data.length))
    whole.set(data, offset)
    await store.replace(oid, whole)
    return
  }
  await store.write(oid, offset, data)
}
