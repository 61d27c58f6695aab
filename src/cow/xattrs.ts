// The extended attributes an image keeps in its inode header (./inode.ts), with ext4's limits
// and the errors ext4 gives: ERANGE for a name too long, E2BIG for a value larger than the
// kernel passes, ENOSPC when they no longer fit, ENODATA for one that is not there.

import { SheepError } from '../errors'
import type { Xattr } from './inode'

/**
 * Room for an image's attributes, counted as ext4 counts its xattr block: each takes its name,
 * its value and XATTR_ENTRY_BYTES. It is what the 4096-byte header leaves after its other
 * fields at their largest (a 255-byte name and tag), with a margin; ext4 with 4 KiB blocks has
 * about as much (one block, shared by all of a file's attributes).
 */
export const XATTR_SPACE = 3072
export const XATTR_ENTRY_BYTES = 16
/** The longest name (linux XATTR_NAME_MAX) and value (XATTR_SIZE_MAX). */
export const XATTR_NAME_MAX = 255
export const XATTR_SIZE_MAX = 65536

/** The header space the attributes take (see XATTR_SPACE). */
export function xattrBytes (xattrs: readonly Xattr[]): number {
  return xattrs.reduce((n, x) => n + Buffer.byteLength(x.name) + x.value.length + XATTR_ENTRY_BYTES, 0)
}

export function findXattr (xattrs: readonly Xattr[], name: string): Buffer | undefined {
  return xattrs.find(x => x.name === name)?.value
}

/**
 * The attributes with `name` set to `value`, or removed (null); `what` names the image in
 * errors. A new list, sorted by name: headers share lists, and the encoding is then one per set.
 */
export function withXattr (xattrs: readonly Xattr[], name: string, value: Buffer | null, what: string): Xattr[] {
  const bytes = Buffer.byteLength(name)
  if (bytes === 0 || bytes > XATTR_NAME_MAX) throw new SheepError('ERANGE', `${what}: an attribute name of ${bytes} bytes (1 to ${XATTR_NAME_MAX})`)
  const rest = xattrs.filter(x => x.name !== name)
  if (value === null) {
    if (rest.length === xattrs.length) throw new SheepError('ENODATA', `${what} has no attribute ${name}`)
    return rest
  }
  if (value.length > XATTR_SIZE_MAX) throw new SheepError('E2BIG', `${what}: a value of ${value.length} bytes for ${name} (at most ${XATTR_SIZE_MAX})`)
  const next = [...rest, { name, value: Buffer.from(value) }].sort((a, b) => a.name < b.name ? -1 : a.name > b.name ? 1 : 0)
  if (xattrBytes(next) > XATTR_SPACE) {
    throw SheepError.noSpace(`${what}: no room for ${name} (${value.length} bytes): an image's attributes take at most ${XATTR_SPACE} bytes, ${XATTR_ENTRY_BYTES} more for each`)
  }
  return next
}
