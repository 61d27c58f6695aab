// The store's index: one classic-level record per object, keyed by the object id in hex.
// Record format v1 (compact-encoding): uint version, uint size.

import { ClassicLevel } from 'classic-level'
import c from 'compact-encoding'
import { SheepError } from '../errors'
import { type ObjectId, oidFromHex, oidToHex } from './oid'
import type { ObjectInfo } from './types'

const RECORD_FORMAT = 1

const record = {
  preencode (state: c.State, r: { version: number, size: number }) {
    c.uint.preencode(state, RECORD_FORMAT); c.uint.preencode(state, r.version); c.uint.preencode(state, r.size)
  },
  encode (state: c.State, r: { version: number, size: number }) {
    c.uint.encode(state, RECORD_FORMAT); c.uint.encode(state, r.version); c.uint.encode(state, r.size)
  },
  decode (state: c.State) {
    const format = c.uint.decode(state)
    if (format !== RECORD_FORMAT) throw new Error(`unknown index record format ${format}`)
    return { version: c.uint.decode(state), size: c.uint.decode(state) }
  }
}

export class Catalog {
  private readonly db: ClassicLevel<string, Buffer>

  constructor (dir: string) {
    this.db = new ClassicLevel<string, Buffer>(dir, { keyEncoding: 'utf8', valueEncoding: 'buffer' })
  }

  async open (): Promise<void> {
    try {
      await this.db.open()
    } catch (err) {
      const cause = (err as { cause?: { code?: string } }).cause
      if (cause?.code === 'LEVEL_LOCKED') throw SheepError.busy('the store is in use by another sheep daemon')
      throw SheepError.corrupt(`cannot open the store index: ${(err as Error).message}`)
    }
  }

  async close (): Promise<void> { await this.db.close() }

  async get (oid: ObjectId): Promise<ObjectInfo | null> {
    const value = await this.db.get(oidToHex(oid))
    if (value === undefined) return null
    return { oid, ...decodeRecord(oid, value) }
  }

  async put (infos: ObjectInfo[], sync = false): Promise<void> {
    if (infos.length === 1) {
      const i = infos[0] as ObjectInfo
      await this.db.put(oidToHex(i.oid), c.encode(record, i), { sync })
      return
    }
    await this.db.batch(infos.map(i => ({ type: 'put' as const, key: oidToHex(i.oid), value: c.encode(record, i) })), { sync })
  }

  async del (oid: ObjectId): Promise<void> { await this.db.del(oidToHex(oid)) }

  /** In id order (keys are fixed-width hex); from `from` on when given. */
  async * list (from?: ObjectId): AsyncIterable<ObjectInfo> {
    for await (const [key, value] of this.db.iterator(from === undefined ? {} : { gte: oidToHex(from) })) {
      const oid = oidFromHex(key)
      if (oid === null) throw SheepError.corrupt(`store index has a malformed key ${JSON.stringify(key)}`)
      yield { oid, ...decodeRecord(oid, value) }
    }
  }
}

function decodeRecord (oid: ObjectId, value: Buffer): { version: number, size: number } {
  try {
    return c.decode(record, value)
  } catch (err) {
    throw SheepError.corrupt(`store index record of object ${oidToHex(oid)} is corrupt: ${(err as Error).message}`)
  }
}
