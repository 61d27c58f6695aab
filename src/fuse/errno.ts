// The one place where errors become errno values for the kernel: Sheep's error codes (whatever a
// call on the image API threw) and the few the sessions answer on their own.

import os from 'node:os'
import { SheepError, toSheepError } from '../errors'

const E = os.constants.errno as Record<string, number>

/** Negative errnos a session answers without asking the image API. */
export const ERRNO = {
  /** An operation this filesystem does not implement. */
  ENOSYS: -(E.ENOSYS as number),
  /** A malformed request. */
  EINVAL: -(E.EINVAL as number),
  EIO: -(E.EIO as number),
  EPROTO: -(E.EPROTO as number),
  /** No such extended attribute. */
  ENODATA: -(E.ENODATA as number),
  /** The caller's buffer is too small for the answer. */
  ERANGE: -(E.ERANGE as number),
  EEXIST: -(E.EEXIST as number),
  EOPNOTSUPP: -(E.EOPNOTSUPP as number),
  /** The daemon did not answer within its I/O timeout. */
  ETIMEDOUT: -(E.ETIMEDOUT as number),
  /** The caller of a request was interrupted (FUSE_INTERRUPT) and the request abandoned. */
  EINTR: -(E.EINTR as number),
  /** An INTERRUPT for a request not (yet) known: the kernel sends it again while that request waits. */
  EAGAIN: -(E.EAGAIN as number)
} as const

/** A negative errno for anything thrown. */
export function errnoOf (err: unknown): number {
  const code = toSheepError(err).code
  const n = code === 'ENOTSUP' ? E.EOPNOTSUPP : E[code]
  return -(n ?? (E.EIO as number))
}

/** The errno an operation failed with; logs what an operator must see (I/O errors and bugs). */
export function failedOp (op: string, path: string, err: unknown, log: (line: string) => void): number {
  // EINVAL on a read or write is Sheep's own inconsistency (an object shorter than its image
  // expects), never the guest's doing: logged as an I/O error is.
  if (err instanceof SheepError && (err.code === 'EIO' || (err.code === 'EINVAL' && (op === 'read' || op === 'write')))) log(`${op} ${path}: ${err.message}`)
  else if (!(err instanceof SheepError)) log(`${op} ${path}: unexpected error: ${(err as Error)?.stack ?? String(err)}`)
  return errnoOf(err)
}
