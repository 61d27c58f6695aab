// One error type for every layer. `code` is a stable POSIX-like name: src/fuse maps it to an errno,
// the control socket carries it to the CLI, and tests assert on it.

export type ErrorCode =
  | 'ENOENT' // no such image or object
  | 'EEXIST' // name already taken
  | 'EINVAL' // malformed argument
  | 'ENAMETOOLONG'
  | 'EFBIG' // beyond the largest image size
  | 'ENOSPC' // the store is full
  | 'EROFS' // write to something read-only
  | 'EISDIR'
  | 'ENOTDIR'
  | 'EPERM' // operation not supported on this kind of entry; a peer's request it may not make
  | 'EBUSY' // in use (store locked, image open, mount busy)
  | 'EIO' // a corrupt, truncated or missing object
  | 'ENOTSUP'
  | 'ESHUTDOWN' // the node is closing
  | 'ENOTCONN' // a peer could not be reached, or went away mid-request
  | 'ESTALE' // a peer request from another epoch than the replica's; an open image changed on another host
  | 'EPROTO' // a malformed peer message
  | 'EAGAIN' // a compare-and-swap lost to another change; retry on the new state
  | 'ENXIO' // lseek SEEK_DATA/SEEK_HOLE at or past the end, or no data after the offset
  | 'ENODATA' // no such extended attribute
  | 'ERANGE' // an extended attribute name too long
  | 'E2BIG' // an extended attribute value too large
  | 'EACCES' // a file or folder another user owns (the control socket's)

export class SheepError extends Error {
  readonly code: ErrorCode

  constructor (code: ErrorCode, message: string) {
    super(message)
    this.name = 'SheepError'
    this.code = code
  }

  static notFound (what: string): SheepError { return new SheepError('ENOENT', `${what} does not exist`) }
  static exists (what: string): SheepError { return new SheepError('EEXIST', `${what} already exists`) }
  static invalid (message: string): SheepError { return new SheepError('EINVAL', message) }
  static tooBig (message: string): SheepError { return new SheepError('EFBIG', message) }
  static noSpace (message: string): SheepError { return new SheepError('ENOSPC', message) }
  static readOnly (what: string): SheepError { return new SheepError('EROFS', `${what} is read-only`) }
  static busy (message: string): SheepError { return new SheepError('EBUSY', message) }
  static corrupt (message: string): SheepError { return new SheepError('EIO', message) }
  static closing (): SheepError { return new SheepError('ESHUTDOWN', 'the node is shutting down') }
  static unreachable (message: string): SheepError { return new SheepError('ENOTCONN', message) }
  static stale (message: string): SheepError { return new SheepError('ESTALE', message) }
  static protocol (message: string): SheepError { return new SheepError('EPROTO', message) }
  static conflict (message: string): SheepError { return new SheepError('EAGAIN', message) }
}

const CODES = new Set<string>(['ENOENT', 'EEXIST', 'EINVAL', 'ENAMETOOLONG', 'EFBIG', 'ENOSPC', 'EROFS',
  'EISDIR', 'ENOTDIR', 'EPERM', 'EBUSY', 'EIO', 'ENOTSUP', 'ESHUTDOWN', 'ENOTCONN', 'ESTALE', 'EPROTO', 'EAGAIN', 'ENXIO',
  'ENODATA', 'ERANGE', 'E2BIG', 'EACCES'])

export function isErrorCode (code: string): code is ErrorCode { return CODES.has(code) }

/**
 * A failure of one store's disk (EIO, ENOSPC), not of the request: another replica may well have
 * done what this one could not.
 */
export function isDiskFailure (err: unknown): boolean {
  return err instanceof SheepError && (err.code === 'EIO' || err.code === 'ENOSPC')
}

/** Turns anything thrown (a SheepError, a Node system error, a bug) into a SheepError. */
export function toSheepError (err: unknown): SheepError {
  if (err instanceof SheepError) return err
  const e = err as NodeJS.ErrnoException | undefined
  if (e && typeof e.code === 'string') {
    if (e.code === 'EDQUOT') return SheepError.noSpace(e.message)
    if (isErrorCode(e.code)) return new SheepError(e.code, e.message)
  }
  return new SheepError('EIO', e instanceof Error ? e.message : String(err))
}
