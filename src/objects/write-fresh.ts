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
    // Bytes a dead writer left must not show around the new ones. Each truncate is recorded
    // before the file changes, so a crash between them leaves a shorter object, never a torn one.
    await store.truncate(oid, 0)
    await store.truncate(oid, size)
  }
  await store.write(oid, offset, data)
}
