// Object ids, as in Sheepdog: 64 bits = type (4) | reserved (4) | vid (24) | index (32).
// A data object (vid, idx) holds bytes [idx * objectSize, (idx + 1) * objectSize) of image vid;
// an inode object (vid) holds that image's header and owner table; meta objects hold cluster-wide
// records such as the image directory; a token object (vid) says which host of a cluster holds
// image vid's write token.

export type ObjectId = bigint

export enum ObjectType { Data = 0, Inode = 1, Meta = 2, Token = 3 }

export const MAX_VID = 0xffffff
export const MAX_INDEX = 0xffffffff

const TYPE_SHIFT = 60n
const VID_SHIFT = 32n
const MASK32 = 0xffffffffn
const MASK24 = 0xffffffn

function checkVid (vid: number): void {
  if (!Number.isInteger(vid) || vid < 0 || vid > MAX_VID) throw new RangeError(`vid out of range: ${vid}`)
}

function pack (type: ObjectType, vid: number, idx: number): ObjectId {
  checkVid(vid)
  if (!Number.isInteger(idx) || idx < 0 || idx > MAX_INDEX) throw new RangeError(`object index out of range: ${idx}`)
  return (BigInt(type) << TYPE_SHIFT) | (BigInt(vid) << VID_SHIFT) | BigInt(idx)
}

export function dataOid (vid: number, idx: number): ObjectId { return pack(ObjectType.Data, vid, idx) }
export function inodeOid (vid: number): ObjectId { return pack(ObjectType.Inode, vid, 0) }
export function metaOid (n: number): ObjectId { return pack(ObjectType.Meta, 0, n) }
export function tokenOid (vid: number): ObjectId { return pack(ObjectType.Token, vid, 0) }

export function oidType (oid: ObjectId): ObjectType { return Number(oid >> TYPE_SHIFT) as ObjectType }
export function oidVid (oid: ObjectId): number { return Number((oid >> VID_SHIFT) & MASK24) }
export function oidIndex (oid: ObjectId): number { return Number(oid & MASK32) }

export function oidToHex (oid: ObjectId): string { return oid.toString(16).padStart(16, '0') }

/** Parses a 16-digit hex id, as used for object file names; returns null for anything else. */
export function oidFromHex (hex: string): ObjectId | null {
  if (!/^[0-9a-f]{16}$/.test(hex)) return null
  const oid = BigInt('0x' + hex)
  const type = oidType(oid)
  if (type > ObjectType.Token) return null
  if (((oid >> 56n) & 0xfn) !== 0n) return null
  return oid
}
