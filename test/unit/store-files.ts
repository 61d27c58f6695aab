// Shared by the unit tests of a LocalObjectStore on disk: its files as a crash or a failing disk
// leaves them, and the patterns written into them.

import fs from 'node:fs'
import path from 'node:path'
import type { LocalObjectStore } from '../../src/objects/local-store'
import { type ObjectId, oidToHex, oidVid } from '../../src/objects/oid'
import { tmpDir } from './tmp'

interface Teardownable { teardown (fn: () => unknown): void }

/** Bytes that differ at every offset and from seed to seed. */
export function pattern (length: number, seed: number): Buffer {
  const b = Buffer.alloc(length)
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed * 7 + 1) & 0xff
  return b
}

/** `length` bytes of the object at `offset` (0xaa where the store wrote nothing). */
export async function read (store: Pick<LocalObjectStore, 'read'>, oid: ObjectId, offset: number, length: number): Promise<Buffer> {
  const b = Buffer.alloc(length, 0xaa)
  await store.read(oid, offset, length, b, 0)
  return b
}

/** The path of an object's file in a store's folder. */
export function objectFile (dir: string, oid: ObjectId): string {
  return path.join(dir, 'objects', oidVid(oid).toString(16).padStart(6, '0'), oidToHex(oid))
}

/** The store's folder as a SIGKILL would leave it: what was written to files, nothing of memory. */
export function crashCopy (t: Teardownable, dir: string): string {
  const copy = tmpDir(t)
  fs.cpSync(dir, copy, { recursive: true })
  fs.rmSync(path.join(copy, 'index', 'LOCK'), { force: true })
  return copy
}
