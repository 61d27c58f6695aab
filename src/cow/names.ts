import { SheepError } from '../errors'

export const MAX_NAME_BYTES = 255

/** Names that the mount keeps for itself (snapshot views, control files). */
const RESERVED = /^\.(snapshots|sheep)/

/** An image's name is its file name under the mount: one path component, printable. */
export function validateImageName (name: unknown): string {
  if (typeof name !== 'string' || name.length === 0) throw SheepError.invalid('an image name must not be empty')
  if (Buffer.byteLength(name) > MAX_NAME_BYTES) throw new SheepError('ENAMETOOLONG', `image name is longer than ${MAX_NAME_BYTES} bytes`)
  if (name === '.' || name === '..') throw SheepError.invalid(`"${name}" is not an image name`)
  if (name.includes('/')) throw SheepError.invalid(`image name ${JSON.stringify(name)} must not contain "/"`)
  if (name.includes('@')) throw SheepError.invalid(`image name ${JSON.stringify(name)} must not contain "@" (it separates image and snapshot)`)
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) throw SheepError.invalid(`image name ${JSON.stringify(name)} must not contain control characters`)
  if (RESERVED.test(name)) throw SheepError.invalid(`image name ${JSON.stringify(name)} is reserved`)
  return name
}

/** A snapshot tag follows the same rules as an image name. */
export function validateTag (tag: unknown): string {
  if (typeof tag !== 'string' || tag.length === 0) throw SheepError.invalid('a snapshot tag must not be empty')
  try {
    return validateImageName(tag)
  } catch (err) {
    throw new SheepError((err as SheepError).code, (err as SheepError).message.replace(/an image name/g, 'a snapshot tag').replace(/image name/g, 'snapshot tag'))
  }
}
