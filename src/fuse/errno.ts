// The one place where Sheep's error codes become errno values for the kernel.

import os from 'node:os'
import { toSheepError } from '../errors'

const E = os.constants.errno as Record<string, number>

/** A negative errno for anything thrown. */
export function errnoOf (err: unknown): number {
  const code = toSheepError(err).code
  const n = code === 'ENOTSUP' ? E.EOPNOTSUPP : E[code]
  return -(n ?? (E.EIO as number))
}
