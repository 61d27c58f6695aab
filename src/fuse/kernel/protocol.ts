// The FUSE kernel protocol (linux/fuse.h) as far as Sheep speaks it: opcodes, flags and every
// struct it reads or writes, each defined once as a field list that both decodes and encodes.
// Sheep negotiates protocol 7.31; struct sizes below are the ones the kernel uses at that minor
// (fuse_setxattr_in is the 8-byte form before FUSE_SETXATTR_EXT, 7.33).

export const FUSE_KERNEL_VERSION = 7
export const FUSE_KERNEL_MINOR = 31
export const FUSE_ROOT_ID = 1
/** The longest name older kernels forward (newer ones forward longer names; Sheep answers ENAMETOOLONG as the older did). */
export const FUSE_NAME_MAX = 1024

export const Opcode = {
  LOOKUP: 1,
  FORGET: 2,
  GETATTR: 3,
  SETATTR: 4,
  READLINK: 5,
  SYMLINK: 6,
  MKNOD: 8,
  MKDIR: 9,
  UNLINK: 10,
  RMDIR: 11,
  RENAME: 12,
  LINK: 13,
  OPEN: 14,
  READ: 15,
  WRITE: 16,
  STATFS: 17,
  RELEASE: 18,
  FSYNC: 20,
  SETXATTR: 21,
  GETXATTR: 22,
  LISTXATTR: 23,
  REMOVEXATTR: 24,
  FLUSH: 25,
  INIT: 26,
  OPENDIR: 27,
  READDIR: 28,
  RELEASEDIR: 29,
  FSYNCDIR: 30,
  ACCESS: 34,
  CREATE: 35,
  INTERRUPT: 36,
  DESTROY: 38,
  BATCH_FORGET: 42,
  FALLOCATE: 43,
  RENAME2: 45,
  LSEEK: 46,
  // The kernel tries COPY_FILE_RANGE_64 (53) first; the ENOSYS a reader answers makes it use 47.
  COPY_FILE_RANGE: 47
} as const

const OPCODE_NAMES = new Map<number, string>(Object.entries(Opcode).map(([name, n]) => [n, name.toLowerCase()]))
/** A request's name for logs and status: "write", or "op 99" for one Sheep does not know. */
export function opName (opcode: number): string {
  return OPCODE_NAMES.get(opcode) ?? `op ${opcode}`
}

/** fuse_init_in/out flags Sheep asks for (see notes/fuse-kernel.md for what each buys). */
export const InitFlag = {
  ASYNC_READ: 1 << 0,
  ATOMIC_O_TRUNC: 1 << 3,
  BIG_WRITES: 1 << 5,
  ASYNC_DIO: 1 << 15,
  PARALLEL_DIROPS: 1 << 18,
  MAX_PAGES: 1 << 22
} as const

/** fuse_open_out.open_flags */
export const FOPEN_DIRECT_IO = 1 << 0
/** fuse_getattr_in.getattr_flags: fh is set (fstat) */
export const FUSE_GETATTR_FH = 1 << 0

/** fuse_setattr_in.valid */
export const Fattr = {
  MODE: 1 << 0,
  UID: 1 << 1,
  GID: 1 << 2,
  SIZE: 1 << 3,
  ATIME: 1 << 4,
  MTIME: 1 << 5,
  FH: 1 << 6,
  ATIME_NOW: 1 << 7,
  MTIME_NOW: 1 << 8
} as const

/** renameat2 flags that come in fuse_rename2_in */
export const RENAME_NOREPLACE = 1 << 0

/** d_type in fuse_dirent */
export const DT_DIR = 4
export const DT_REG = 8
/** fuse_dirent.ino when the entry's node id is not known (libfuse's FUSE_UNKNOWN_INO) */
export const UNKNOWN_INO = 0xffffffff

/** A request that is too short, or whose fields contradict its length: answered EINVAL. */
export class MalformedRequest extends Error {
  override name = 'MalformedRequest'
}

type Kind = 'u16' | 'u32' | 'u64'
const BYTES: Record<Kind, number> = { u16: 2, u32: 4, u64: 8 }

export interface Struct<N extends string> {
  readonly size: number
  /** Reads the struct at `off`; MalformedRequest if `buf` ends before it does. */
  decode (buf: Buffer, off?: number): Record<N, number>
  /** Writes the struct at `off`; absent fields (padding) are written as 0. */
  encode (values: Partial<Record<N, number>>, buf: Buffer, off?: number): void
}

/**
 * A little-endian struct of unsigned fields in the given order (the kernel's are naturally
 * aligned and padded to 8 bytes; padding is a named field). u64 values are JavaScript numbers:
 * sizes, offsets, node ids and handles stay far below 2^53.
 */
function struct<const F extends ReadonlyArray<readonly [string, Kind]>> (fields: F): Struct<F[number][0]> {
  type N = F[number][0]
  const at: Array<[N, Kind, number]> = []
  let size = 0
  for (const [name, kind] of fields) {
    at.push([name, kind, size])
    size += BYTES[kind]
  }
  return {
    size,
    decode (buf, off = 0) {
      if (off + size > buf.length) throw new MalformedRequest(`request too short: ${buf.length - off} bytes where ${size} are needed`)
      const out = {} as Record<N, number>
      for (const [name, kind, o] of at) {
        const p = off + o
        out[name] = kind === 'u16' ? buf.readUInt16LE(p) : kind === 'u32' ? buf.readUInt32LE(p) : buf.readUInt32LE(p) + buf.readUInt32LE(p + 4) * 0x100000000
      }
      return out
    },
    encode (values, buf, off = 0) {
      for (const [name, kind, o] of at) {
        const p = off + o
        const v = values[name] ?? 0
        if (kind === 'u16') buf.writeUInt16LE(v, p)
        else if (kind === 'u32') buf.writeUInt32LE(v >>> 0, p)
        else {
          buf.writeUInt32LE(v % 0x100000000, p)
          buf.writeUInt32LE(Math.floor(v / 0x100000000), p + 4)
        }
      }
    }
  }
}

export const InHeader = struct([['len', 'u32'], ['opcode', 'u32'], ['unique', 'u64'], ['nodeid', 'u64'], ['uid', 'u32'],
  ['gid', 'u32'], ['pid', 'u32'], ['total_extlen', 'u16'], ['padding', 'u16']])
/** error is an int32 in the kernel's header: a negative errno, written here as its u32 bits. */
export const OutHeader = struct([['len', 'u32'], ['error', 'u32'], ['unique', 'u64']])

/** The part of fuse_init_in every kernel sends (flags2 and the rest came with 7.36). */
export const InitIn = struct([['major', 'u32'], ['minor', 'u32'], ['max_readahead', 'u32'], ['flags', 'u32']])
export const InitOut = struct([['major', 'u32'], ['minor', 'u32'], ['max_readahead', 'u32'], ['flags', 'u32'],
  ['max_background', 'u16'], ['congestion_threshold', 'u16'], ['max_write', 'u32'], ['time_gran', 'u32'],
  ['max_pages', 'u16'], ['map_alignment', 'u16'], ['flags2', 'u32'],
  ['unused0', 'u32'], ['unused1', 'u32'], ['unused2', 'u32'], ['unused3', 'u32'], ['unused4', 'u32'], ['unused5', 'u32'], ['unused6', 'u32']])

export const Attr = struct([['ino', 'u64'], ['size', 'u64'], ['blocks', 'u64'], ['atime', 'u64'], ['mtime', 'u64'], ['ctime', 'u64'],
  ['atimensec', 'u32'], ['mtimensec', 'u32'], ['ctimensec', 'u32'], ['mode', 'u32'], ['nlink', 'u32'], ['uid', 'u32'],
  ['gid', 'u32'], ['rdev', 'u32'], ['blksize', 'u32'], ['flags', 'u32']])
/** fuse_entry_out is this followed by a fuse_attr. */
export const EntryOutHead = struct([['nodeid', 'u64'], ['generation', 'u64'], ['entry_valid', 'u64'], ['attr_valid', 'u64'],
  ['entry_valid_nsec', 'u32'], ['attr_valid_nsec', 'u32']])
/** fuse_attr_out is this followed by a fuse_attr. */
export const AttrOutHead = struct([['attr_valid', 'u64'], ['attr_valid_nsec', 'u32'], ['dummy', 'u32']])

export const GetattrIn = struct([['getattr_flags', 'u32'], ['dummy', 'u32'], ['fh', 'u64']])
export const SetattrIn = struct([['valid', 'u32'], ['padding', 'u32'], ['fh', 'u64'], ['size', 'u64'], ['lock_owner', 'u64'],
  ['atime', 'u64'], ['mtime', 'u64'], ['ctime', 'u64'], ['atimensec', 'u32'], ['mtimensec', 'u32'], ['ctimensec', 'u32'],
  ['mode', 'u32'], ['unused4', 'u32'], ['uid', 'u32'], ['gid', 'u32'], ['unused5', 'u32']])
export const OpenIn = struct([['flags', 'u32'], ['open_flags', 'u32']])
export const CreateIn = struct([['flags', 'u32'], ['mode', 'u32'], ['umask', 'u32'], ['open_flags', 'u32']])
export const OpenOut = struct([['fh', 'u64'], ['open_flags', 'u32'], ['padding', 'u32']])
export const ReleaseIn = struct([['fh', 'u64'], ['flags', 'u32'], ['release_flags', 'u32'], ['lock_owner', 'u64']])
export const FlushIn = struct([['fh', 'u64'], ['unused', 'u32'], ['padding', 'u32'], ['lock_owner', 'u64']])
export const ReadIn = struct([['fh', 'u64'], ['offset', 'u64'], ['size', 'u32'], ['read_flags', 'u32'], ['lock_owner', 'u64'],
  ['flags', 'u32'], ['padding', 'u32']])
/** fuse_write_in; the bytes follow it. */
export const WriteIn = struct([['fh', 'u64'], ['offset', 'u64'], ['size', 'u32'], ['write_flags', 'u32'], ['lock_owner', 'u64'],
  ['flags', 'u32'], ['padding', 'u32']])
export const WriteOut = struct([['size', 'u32'], ['padding', 'u32']])
export const FsyncIn = struct([['fh', 'u64'], ['fsync_flags', 'u32'], ['padding', 'u32']])
export const StatfsOut = struct([['blocks', 'u64'], ['bfree', 'u64'], ['bavail', 'u64'], ['files', 'u64'], ['ffree', 'u64'],
  ['bsize', 'u32'], ['namelen', 'u32'], ['frsize', 'u32'], ['padding', 'u32'],
  ['spare0', 'u32'], ['spare1', 'u32'], ['spare2', 'u32'], ['spare3', 'u32'], ['spare4', 'u32'], ['spare5', 'u32']])
/** The compat (pre-7.33) fuse_setxattr_in; name\0 and the value follow. */
export const SetxattrIn = struct([['size', 'u32'], ['flags', 'u32']])
/** GETXATTR (name\0 follows) and LISTXATTR: the caller's buffer size, 0 to ask for the size. */
export const GetxattrIn = struct([['size', 'u32'], ['padding', 'u32']])
export const GetxattrOut = struct([['size', 'u32'], ['padding', 'u32']])
export const ForgetIn = struct([['nlookup', 'u64']])
export const BatchForgetIn = struct([['count', 'u32'], ['dummy', 'u32']])
export const ForgetOne = struct([['nodeid', 'u64'], ['nlookup', 'u64']])
export const InterruptIn = struct([['unique', 'u64']])
/** RENAME: old name\0 and new name\0 follow. */
export const RenameIn = struct([['newdir', 'u64']])
export const Rename2In = struct([['newdir', 'u64'], ['flags', 'u32'], ['padding', 'u32']])
export const AccessIn = struct([['mask', 'u32'], ['padding', 'u32']])
export const FallocateIn = struct([['fh', 'u64'], ['offset', 'u64'], ['length', 'u64'], ['mode', 'u32'], ['padding', 'u32']])
export const LseekIn = struct([['fh', 'u64'], ['offset', 'u64'], ['whence', 'u32'], ['padding', 'u32']])
export const LseekOut = struct([['offset', 'u64']])
/** COPY_FILE_RANGE (47); answered with a fuse_write_out. */
export const CopyFileRangeIn = struct([['fh_in', 'u64'], ['off_in', 'u64'], ['nodeid_out', 'u64'], ['fh_out', 'u64'], ['off_out', 'u64'], ['len', 'u64'], ['flags', 'u64']])
/** fuse_dirent; the name follows, the record padded to 8 bytes. */
export const Dirent = struct([['ino', 'u64'], ['off', 'u64'], ['namelen', 'u32'], ['type', 'u32']])

/** Bytes a fuse_dirent with this name takes in a READDIR reply. */
export function direntSize (nameBytes: number): number {
  return (Dirent.size + nameBytes + 7) & ~7
}

/** Writes one fuse_dirent at `off`; returns the offset after it. */
export function encodeDirent (d: { ino: number, off: number, type: number, name: Buffer }, buf: Buffer, off: number): number {
  Dirent.encode({ ino: d.ino, off: d.off, namelen: d.name.length, type: d.type }, buf, off)
  d.name.copy(buf, off + Dirent.size)
  const end = off + direntSize(d.name.length)
  buf.fill(0, off + Dirent.size + d.name.length, end)
  return end
}

/** The NUL-terminated name at `off` and the offset after its NUL; MalformedRequest without one. */
export function readName (buf: Buffer, off: number): { name: string, next: number } {
  const nul = buf.indexOf(0, off)
  if (nul < 0) throw new MalformedRequest('a name without its terminating NUL')
  if (nul === off) throw new MalformedRequest('an empty name')
  return { name: buf.toString('utf8', off, nul), next: nul + 1 }
}

/** A reply: the out header, then `payload` bytes already written after it in `buf`. */
export function finishReply (buf: Buffer, unique: number, payload: number): Buffer {
  const len = OutHeader.size + payload
  OutHeader.encode({ len, error: 0, unique }, buf)
  return len === buf.length ? buf : buf.subarray(0, len)
}

/** An error reply: the out header alone, with a negative errno. */
export function errorReply (unique: number, errno: number): Buffer {
  const buf = Buffer.alloc(OutHeader.size)
  OutHeader.encode({ len: OutHeader.size, error: errno, unique }, buf)
  return buf
}

/** A buffer for a reply of `payload` bytes, its header to be filled by finishReply. */
export function replyBuffer (payload: number): Buffer {
  return Buffer.allocUnsafe(OutHeader.size + payload)
}

/** Milliseconds since the epoch as fuse_attr's seconds and nanoseconds. */
export function splitTime (ms: number): [number, number] {
  const s = Math.floor(ms / 1000)
  return [s, Math.round((ms - s * 1000) * 1e6)]
}

/** Seconds and nanoseconds (fuse_setattr_in) as milliseconds. */
export function joinTime (s: number, ns: number): number {
  return s * 1000 + Math.floor(ns / 1e6)
}

/** What Sheep asks of the kernel in INIT. */
export const WANTED_FLAGS = InitFlag.ASYNC_READ | InitFlag.ATOMIC_O_TRUNC | InitFlag.BIG_WRITES | InitFlag.ASYNC_DIO |
  InitFlag.PARALLEL_DIROPS | InitFlag.MAX_PAGES
export const MAX_WRITE = 1024 * 1024
export const MAX_PAGES = 256
/** A read of /dev/fuse must hold the largest request: max_write plus headers (the kernel checks). */
export const REQUEST_BUFFER = MAX_WRITE + 8192
/** Background requests (async reads and direct I/O) the kernel lets be in the daemon at once. */
const MAX_BACKGROUND = 64

/**
 * The INIT reply to a kernel's fuse_init_in: protocol 7.31 with the flags Sheep wants and the
 * kernel offers. Throws MalformedRequest (answered EPROTO by the session) for a kernel older
 * than 7.31, which lacks what Sheep needs (MAX_PAGES came with 7.28).
 */
export function negotiateInit (init: Record<'major' | 'minor' | 'max_readahead' | 'flags', number>): Buffer {
  if (init.major !== FUSE_KERNEL_VERSION || init.minor < FUSE_KERNEL_MINOR) {
    throw new MalformedRequest(`the kernel speaks FUSE ${init.major}.${init.minor}; Sheep needs ${FUSE_KERNEL_VERSION}.${FUSE_KERNEL_MINOR}`)
  }
  const out = Buffer.alloc(InitOut.size)
  InitOut.encode({
    major: FUSE_KERNEL_VERSION,
    minor: FUSE_KERNEL_MINOR,
    max_readahead: init.max_readahead,
    flags: (init.flags & WANTED_FLAGS) >>> 0,
    max_background: MAX_BACKGROUND,
    congestion_threshold: MAX_BACKGROUND * 3 / 4,
    max_write: MAX_WRITE,
    time_gran: 1,
    max_pages: MAX_PAGES
  }, out)
  return out
}
