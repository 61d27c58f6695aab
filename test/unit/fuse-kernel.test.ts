// The FUSE kernel protocol: every struct's size and codec, INIT negotiation, and a session over a
// real image store fed requests as the kernel would send them, good and malformed.

import t from 'tap'
import fs from 'node:fs'
import os from 'node:os'
import { LocalObjectStore } from '../../src/objects/local-store'
import { ImageStore } from '../../src/cow/image-store'
import { adapterCore, type FsCore } from '../../src/fuse/adapter'
import { KernelSession } from '../../src/fuse/kernel/session'
import * as P from '../../src/fuse/kernel/protocol'
import { tmpDir } from './tmp'

const E = os.constants.errno

interface Teardownable { teardown (fn: () => unknown): void }

t.test('every struct has the size linux/fuse.h gives it at protocol 7.31', async t => {
  const sizes: Array<[string, { size: number }, number]> = [
    ['fuse_in_header', P.InHeader, 40], ['fuse_out_header', P.OutHeader, 16], ['fuse_init_in (7.31 part)', P.InitIn, 16],
    ['fuse_init_out', P.InitOut, 64], ['fuse_attr', P.Attr, 88], ['fuse_entry_out head', P.EntryOutHead, 128 - 88],
    ['fuse_attr_out head', P.AttrOutHead, 104 - 88], ['fuse_getattr_in', P.GetattrIn, 16], ['fuse_setattr_in', P.SetattrIn, 88],
    ['fuse_open_in', P.OpenIn, 8], ['fuse_create_in', P.CreateIn, 16], ['fuse_open_out', P.OpenOut, 16],
    ['fuse_release_in', P.ReleaseIn, 24], ['fuse_flush_in', P.FlushIn, 24], ['fuse_read_in', P.ReadIn, 40],
    ['fuse_write_in', P.WriteIn, 40], ['fuse_write_out', P.WriteOut, 8], ['fuse_fsync_in', P.FsyncIn, 16],
    ['fuse_statfs_out', P.StatfsOut, 80], ['fuse_setxattr_in (compat)', P.SetxattrIn, 8], ['fuse_getxattr_in', P.GetxattrIn, 8],
    ['fuse_getxattr_out', P.GetxattrOut, 8], ['fuse_forget_in', P.ForgetIn, 8], ['fuse_batch_forget_in', P.BatchForgetIn, 8],
    ['fuse_forget_one', P.ForgetOne, 16], ['fuse_interrupt_in', P.InterruptIn, 8], ['fuse_rename_in', P.RenameIn, 8],
    ['fuse_rename2_in', P.Rename2In, 16], ['fuse_access_in', P.AccessIn, 8], ['fuse_dirent head', P.Dirent, 24],
    ['fuse_fallocate_in', P.FallocateIn, 32], ['fuse_lseek_in', P.LseekIn, 24], ['fuse_lseek_out', P.LseekOut, 8], ['fuse_copy_file_range_in', P.CopyFileRangeIn, 56]
  ]
  for (const [name, s, size] of sizes) t.equal(s.size, size, name)
})

t.test('structs decode what they encode, u64 fields beyond 32 bits included, and refuse short buffers', async t => {
  const buf = Buffer.alloc(P.SetattrIn.size)
  const v = { valid: 0x1ff, fh: 2 ** 40 + 3, size: 2 ** 50 + 7, mtime: 1_700_000_000, mtimensec: 999_999_999, mode: 0o100644, uid: 1000, gid: 0xffffffff }
  P.SetattrIn.encode(v, buf)
  t.match(P.SetattrIn.decode(buf), { ...v, padding: 0, lock_owner: 0, atime: 0 })
  const head = Buffer.alloc(P.InHeader.size)
  P.InHeader.encode({ len: 40, opcode: P.Opcode.GETATTR, unique: 2 ** 33 + 2, nodeid: 1, uid: 7, gid: 8, pid: 9 }, head)
  t.same(P.InHeader.decode(head), { len: 40, opcode: 3, unique: 2 ** 33 + 2, nodeid: 1, uid: 7, gid: 8, pid: 9, total_extlen: 0, padding: 0 })
  t.throws(() => P.ReadIn.decode(Buffer.alloc(39)), { name: 'MalformedRequest' })
  t.throws(() => P.WriteIn.decode(Buffer.alloc(48), 16), { name: 'MalformedRequest' })
  const err = P.errorReply(5, -E.ENOENT)
  t.same(P.OutHeader.decode(err), { len: 16, error: 2 ** 32 - E.ENOENT, unique: 5 })
  t.equal(err.readInt32LE(4), -E.ENOENT, 'the error is the int32 the kernel reads')
})

t.test('dirents are padded to 8 bytes; names need their NUL', async t => {
  t.equal(P.direntSize(1), 32)
  t.equal(P.direntSize(8), 32)
  t.equal(P.direntSize(9), 40)
  const buf = Buffer.alloc(64, 0xff)
  const end = P.encodeDirent({ ino: 9, off: 3, type: P.DT_REG, name: Buffer.from('vm1.img') }, buf, 0)
  t.equal(end, 32)
  t.same(P.Dirent.decode(buf), { ino: 9, off: 3, namelen: 7, type: P.DT_REG })
  t.equal(buf.toString('utf8', 24, 31), 'vm1.img')
  t.equal(buf[31], 0, 'padding is zeroed')
  t.same(P.readName(Buffer.from('a\0b\0'), 0), { name: 'a', next: 2 })
  t.same(P.readName(Buffer.from('a\0b\0'), 2), { name: 'b', next: 4 })
  t.throws(() => P.readName(Buffer.from('abc'), 0), { name: 'MalformedRequest' })
  t.throws(() => P.readName(Buffer.from('\0'), 0), { name: 'MalformedRequest' })
})

t.test('INIT: 7.31 with the flags both sides have, 1 MiB writes, 256 pages; older kernels refused', async t => {
  const all = 0xffffffff
  const r = P.InitOut.decode(P.negotiateInit({ major: 7, minor: 45, max_readahead: 131072, flags: all }))
  t.match(r, { major: 7, minor: 31, max_readahead: 131072, flags: P.WANTED_FLAGS, max_write: 1048576, max_pages: 256, time_gran: 1 })
  t.equal(P.WANTED_FLAGS, P.InitFlag.ASYNC_READ | P.InitFlag.ATOMIC_O_TRUNC | P.InitFlag.BIG_WRITES | P.InitFlag.ASYNC_DIO | P.InitFlag.PARALLEL_DIROPS | P.InitFlag.MAX_PAGES)
  const some = P.InitOut.decode(P.negotiateInit({ major: 7, minor: 31, max_readahead: 0, flags: P.InitFlag.ASYNC_READ | (1 << 16) }))
  t.equal(some.flags, P.InitFlag.ASYNC_READ, 'nothing the kernel did not offer, nothing Sheep did not ask for')
  t.throws(() => P.negotiateInit({ major: 7, minor: 30, max_readahead: 0, flags: all }), { name: 'MalformedRequest' })
  t.throws(() => P.negotiateInit({ major: 8, minor: 0, max_readahead: 0, flags: all }), { name: 'MalformedRequest' })
})

/** A session over a real image store; `call` sends one request and resolves with its reply. */
/** Who sends a request: the uid and gid in its header. */
interface Caller { uid: number, gid: number }

interface Harness {
  session: KernelSession
  call: (opcode: number, nodeid: number, body?: Buffer, caller?: Caller) => Promise<Reply>
  /** Sends one request; returns the replies it got at once. `finished`: as session.handle's. */
  raw: (buf: Buffer, finished?: () => void) => Buffer[]
  /** Replies no one waited for since the last raw(). */
  unclaimed: Buffer[]
  /** The reply to the request with this unique, whenever it comes. */
  replyTo: (unique: number) => Promise<Reply>
  logs: string[]
  images: ImageStore
}

interface HarnessOptions {
  ioTimeout?: number
  /** Wraps the adapter core, e.g. to hold an operation until the test lets it go. */
  wrap?: (core: FsCore) => FsCore
}

async function harness (t: Teardownable, opts: HarnessOptions = {}): Promise<Harness> {
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  const images = new ImageStore(objects)
  await images.open()
  const logs: string[] = []
  const log = (line: string): void => { logs.push(line) }
  const replies: Buffer[] = []
  const waiting = new Map<number, (r: Buffer) => void>()
  const send = (reply: Buffer): void => {
    const unique = P.OutHeader.decode(reply).unique
    const w = waiting.get(unique)
    if (w !== undefined) { waiting.delete(unique); w(Buffer.from(reply)) } else replies.push(Buffer.from(reply))
  }
  const core = adapterCore(images, { createOptions: { objectSize: 65536, copies: 1 }, log })
  const session = new KernelSession(opts.wrap?.(core) ?? core, send, { ioTimeout: opts.ioTimeout ?? 60_000, log })
  t.teardown(async () => {
    session.close()
    await images.close()
    await objects.close()
  })
  let unique = 100
  const call = async (opcode: number, nodeid: number, body: Buffer = Buffer.alloc(0), caller?: Caller): Promise<Reply> => {
    const u = unique += 2
    const buf = request(opcode, u, nodeid, body, caller)
    const got = new Promise<Buffer>(resolve => waiting.set(u, resolve))
    session.handle(buf)
    const r = await got
    return { error: r.readInt32LE(4), body: r.subarray(16), unique: u }
  }
  // Requests that may get no reply: what they got at once.
  const raw = (buf: Buffer, finished?: () => void): Buffer[] => {
    replies.length = 0
    session.handle(buf, finished)
    return [...replies]
  }
  const replyTo = async (u: number): Promise<Reply> => {
    const r = await new Promise<Buffer>(resolve => waiting.set(u, resolve))
    return { error: r.readInt32LE(4), body: r.subarray(16), unique: u }
  }
  return { session, call, raw, unclaimed: replies, replyTo, logs, images }
}

interface Reply { error: number, body: Buffer, unique: number }

function request (opcode: number, unique: number, nodeid: number, body: Buffer, caller: Caller = { uid: 0, gid: 0 }): Buffer {
  const buf = Buffer.alloc(P.InHeader.size + body.length)
  P.InHeader.encode({ len: buf.length, opcode, unique, nodeid, ...caller }, buf)
  body.copy(buf, P.InHeader.size)
  return buf
}

function struct<N extends string> (s: P.Struct<N>, v: Partial<Record<N, number>>, tail: Buffer | string = ''): Buffer {
  const b = Buffer.alloc(s.size)
  s.encode(v, b)
  return Buffer.concat([b, typeof tail === 'string' ? Buffer.from(tail) : tail])
}

t.test('a session serves create, write, read, lookup, getattr, readdir, xattrs, rename and unlink', async t => {
  const { call } = await harness(t)
  const init = await call(P.Opcode.INIT, 0, struct(P.InitIn, { major: 7, minor: 45, max_readahead: 65536, flags: 0xffffffff }))
  t.equal(init.error, 0)
  t.match(P.InitOut.decode(init.body), { minor: 31, max_write: 1048576 })

  t.equal((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('vm1.img\0'))).error, -E.ENOENT)
  const created = await call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR | fs.constants.O_CREAT, mode: 0o100644, umask: 0o022 }, 'vm1.img\0'))
  t.equal(created.error, 0)
  const entry = P.EntryOutHead.decode(created.body)
  t.not(entry.nodeid, P.FUSE_ROOT_ID)
  t.equal(entry.entry_valid + entry.attr_valid, 0, 'nothing cached: another host may change the image')
  const open = P.OpenOut.decode(created.body, P.EntryOutHead.size + P.Attr.size)
  t.equal(open.open_flags & P.FOPEN_DIRECT_IO, P.FOPEN_DIRECT_IO, 'direct I/O: no page cache')

  const data = Buffer.alloc(200_000, 0x5a)
  const w = await call(P.Opcode.WRITE, entry.nodeid, struct(P.WriteIn, { fh: open.fh, offset: 4096, size: data.length }, data))
  t.equal(w.error, 0)
  t.equal(P.WriteOut.decode(w.body).size, data.length)
  const r = await call(P.Opcode.READ, entry.nodeid, struct(P.ReadIn, { fh: open.fh, offset: 0, size: 8192 }))
  t.equal(r.body.length, 8192)
  t.ok(r.body.subarray(0, 4096).equals(Buffer.alloc(4096)) && r.body.subarray(4096).equals(Buffer.alloc(4096, 0x5a)))
  const past = await call(P.Opcode.READ, entry.nodeid, struct(P.ReadIn, { fh: open.fh, offset: 204_096 - 10, size: 4096 }))
  t.equal(past.body.length, 10, 'a read is cut at the end of the image')

  const looked = await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('vm1.img\0'))
  t.equal(P.EntryOutHead.decode(looked.body).nodeid, entry.nodeid, 'one node id per path')
  const attr = P.Attr.decode((await call(P.Opcode.GETATTR, entry.nodeid, struct(P.GetattrIn, {}))).body, P.AttrOutHead.size)
  t.match(attr, { ino: entry.nodeid, size: 204_096, mode: 0o100644, nlink: 1 })

  const dir = P.OpenOut.decode((await call(P.Opcode.OPENDIR, P.FUSE_ROOT_ID, struct(P.OpenIn, {}))).body)
  const list = (await call(P.Opcode.READDIR, P.FUSE_ROOT_ID, struct(P.ReadIn, { fh: dir.fh, offset: 0, size: 4096 }))).body
  const names: string[] = []
  for (let at = 0; at < list.length;) {
    const d = P.Dirent.decode(list, at)
    names.push(list.toString('utf8', at + 24, at + 24 + d.namelen) + (d.type === P.DT_DIR ? '/' : ''))
    at += P.direntSize(d.namelen)
  }
  t.same(names, ['./', '../', 'vm1.img'])
  const rest = await call(P.Opcode.READDIR, P.FUSE_ROOT_ID, struct(P.ReadIn, { fh: dir.fh, offset: 3, size: 4096 }))
  t.equal(rest.body.length, 0, 'the end of the listing')
  t.equal((await call(P.Opcode.RELEASEDIR, P.FUSE_ROOT_ID, struct(P.ReleaseIn, { fh: dir.fh }))).error, 0)

  const size = await call(P.Opcode.GETXATTR, entry.nodeid, struct(P.GetxattrIn, { size: 0 }, 'user.sheep.copies\0'))
  t.equal(P.GetxattrOut.decode(size.body).size, 1)
  t.equal((await call(P.Opcode.GETXATTR, entry.nodeid, struct(P.GetxattrIn, { size: 10 }, 'user.sheep.copies\0'))).body.toString(), '1')
  t.equal((await call(P.Opcode.GETXATTR, entry.nodeid, struct(P.GetxattrIn, { size: 10 }, 'user.other\0'))).error, -E.ENODATA)
  t.equal((await call(P.Opcode.LISTXATTR, entry.nodeid, struct(P.GetxattrIn, { size: 1 }))).error, -E.ERANGE)

  const trunc = await call(P.Opcode.SETATTR, entry.nodeid, struct(P.SetattrIn, { valid: P.Fattr.SIZE | P.Fattr.FH, fh: open.fh, size: 65536 }))
  t.equal(P.Attr.decode(trunc.body, P.AttrOutHead.size).size, 65536)
  t.equal((await call(P.Opcode.RENAME, P.FUSE_ROOT_ID, struct(P.RenameIn, { newdir: P.FUSE_ROOT_ID }, 'vm1.img\0vm2.img\0'))).error, 0)
  t.equal(P.EntryOutHead.decode((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('vm2.img\0'))).body).nodeid, entry.nodeid, 'the node follows its rename')
  t.equal((await call(P.Opcode.RENAME2, P.FUSE_ROOT_ID, struct(P.Rename2In, { newdir: P.FUSE_ROOT_ID, flags: P.RENAME_NOREPLACE }, 'vm2.img\0vm2.img\0'))).error, -E.EEXIST)
  t.equal((await call(P.Opcode.UNLINK, P.FUSE_ROOT_ID, Buffer.from('vm2.img\0'))).error, 0)
  t.equal((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('vm2.img\0'))).error, -E.ENOENT, 'unlinked: the name is gone')
  const fstat = await call(P.Opcode.GETATTR, entry.nodeid, struct(P.GetattrIn, { getattr_flags: P.FUSE_GETATTR_FH, fh: open.fh }))
  t.equal(P.Attr.decode(fstat.body, P.AttrOutHead.size).size, 65536, 'an open handle still reaches the unlinked image')
  const byNode = await call(P.Opcode.GETATTR, entry.nodeid, struct(P.GetattrIn, {}))
  t.equal(P.Attr.decode(byNode.body, P.AttrOutHead.size).size, 65536, 'fstat comes by node id alone: answered through the open handle')
  const again = await call(P.Opcode.READ, entry.nodeid, struct(P.ReadIn, { fh: open.fh, offset: 4096, size: 4 }))
  t.ok(again.body.equals(Buffer.alloc(4, 0x5a)))
  t.equal((await call(P.Opcode.RELEASE, entry.nodeid, struct(P.ReleaseIn, { fh: open.fh }))).error, 0)
  t.equal((await call(P.Opcode.GETATTR, entry.nodeid, struct(P.GetattrIn, {}))).error, -E.ENOENT, 'closed and unlinked: nothing left')
  t.equal((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('y'.repeat(2000) + '\0'))).error, -E.ENAMETOOLONG, 'a name longer than FUSE_NAME_MAX')
  t.equal((await call(P.Opcode.MKDIR, P.FUSE_ROOT_ID, struct(P.AccessIn, {}, 'd\0'))).error, -E.EPERM)
})

t.test('CREATE makes the image the caller\'s, with its mode less its umask; xattrs are kept as ext4 keeps them', async t => {
  const { call } = await harness(t)
  const created = await call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR, mode: 0o100666, umask: 0o027 }, 'mine.img\0'), { uid: 1234, gid: 5678 })
  t.equal(created.error, 0)
  const node = P.EntryOutHead.decode(created.body).nodeid
  t.match(P.Attr.decode(created.body, P.EntryOutHead.size), { uid: 1234, gid: 5678, mode: 0o100640 }, 'the entry: the caller\'s, 0666 & ~027')
  const { fh } = P.OpenOut.decode(created.body, P.EntryOutHead.size + P.Attr.size)
  t.equal((await call(P.Opcode.RELEASE, node, struct(P.ReleaseIn, { fh }))).error, 0)
  t.match(P.Attr.decode((await call(P.Opcode.GETATTR, node, struct(P.GetattrIn, {}))).body, P.AttrOutHead.size), { uid: 1234, gid: 5678, mode: 0o100640 }, 'and after its close')

  const set = async (name: string, value: string, flags = 0): Promise<number> =>
    (await call(P.Opcode.SETXATTR, node, struct(P.SetxattrIn, { size: Buffer.byteLength(value), flags }, `${name}\0${value}`))).error
  const get = async (name: string): Promise<Reply> => await call(P.Opcode.GETXATTR, node, struct(P.GetxattrIn, { size: 4096 }, `${name}\0`))
  t.equal(await set('security.selinux', 'system_u:object_r:svirt_image_t:s0'), 0)
  t.equal((await get('security.selinux')).body.toString(), 'system_u:object_r:svirt_image_t:s0', 'security.* round trip')
  t.equal(await set('trusted.a', '1', 1), 0, 'XATTR_CREATE of a new one')
  t.equal(await set('trusted.a', '2', 1), -E.EEXIST, 'XATTR_CREATE of one there: EEXIST')
  t.equal(await set('trusted.b', '2', 2), -E.ENODATA, 'XATTR_REPLACE of one not there: ENODATA')
  t.equal(await set('trusted.a', '3', 2), 0, 'XATTR_REPLACE of one there')
  t.equal((await get('trusted.a')).body.toString(), '3')
  t.equal(await set('user.empty', ''), 0, 'an empty value')
  t.equal((await get('user.empty')).body.length, 0)
  const names = (await call(P.Opcode.LISTXATTR, node, struct(P.GetxattrIn, { size: 4096 }))).body.toString().split('\0').filter(n => n !== '')
  t.same(names.filter(n => !n.startsWith('user.sheep.')), ['security.selinux', 'trusted.a', 'user.empty'], 'listed, with Sheep\'s own')
  t.ok(names.includes('user.sheep.vid'))
  t.equal(await set('user.sheep.vid', '1'), -E.EPERM, 'user.sheep.* stay read-only')
  t.equal(await set('system.posix_acl_access', 'x'), -E.EOPNOTSUPP, 'system.*: not kept')
  t.equal(await set('user.big', 'x'.repeat(4000)), -E.ENOSPC, 'past the room: ENOSPC')
  t.equal((await call(P.Opcode.REMOVEXATTR, node, Buffer.from('trusted.a\0'))).error, 0, 'removed')
  t.equal((await get('trusted.a')).error, -E.ENODATA, 'gone')
  t.equal((await call(P.Opcode.REMOVEXATTR, node, Buffer.from('trusted.a\0'))).error, -E.ENODATA, 'removing it again: ENODATA')
  t.equal((await call(P.Opcode.SETXATTR, P.FUSE_ROOT_ID, struct(P.SetxattrIn, { size: 1 }, 'user.x\0y'))).error, -E.EOPNOTSUPP, 'the root keeps none')
})

t.test('malformed and unknown requests get EINVAL, EIO or ENOSYS and never throw', async t => {
  const { session, call, raw, logs } = await harness(t)
  t.same(raw(Buffer.alloc(10)), [], 'too short to name a request: nothing to answer')
  const lying = request(P.Opcode.GETATTR, 7, 1, struct(P.GetattrIn, {}))
  lying.writeUInt32LE(1000, 0)
  const eio = raw(lying)
  t.equal(eio.length, 1)
  t.match(P.OutHeader.decode(eio[0] as Buffer), { unique: 7, error: 2 ** 32 - E.EIO })
  t.ok(logs.some(l => /malformed/.test(l)), 'logged')
  t.equal((await call(99, 1)).error, -E.ENOSYS)
  t.equal((await call(P.Opcode.LOOKUP, 1, Buffer.from('no-nul'))).error, -E.EINVAL)
  t.equal((await call(P.Opcode.READ, 1, Buffer.alloc(12))).error, -E.EINVAL)
  t.equal((await call(P.Opcode.WRITE, 1, struct(P.WriteIn, { fh: 1, size: 4096 }, Buffer.alloc(100)))).error, -E.EINVAL, 'a WRITE shorter than it says')
  t.equal((await call(P.Opcode.READ, 1, struct(P.ReadIn, { fh: 12345, size: 4096 }))).error, -E.EINVAL, 'a handle that is not open')
  t.equal((await call(P.Opcode.READDIR, 1, struct(P.ReadIn, { fh: 12345, size: 4096 }))).error, -E.EINVAL)
  t.equal((await call(P.Opcode.GETATTR, 999, struct(P.GetattrIn, {}))).error, -E.ENOENT, 'a node id never given')
  t.equal((await call(P.Opcode.INIT, 0, struct(P.InitIn, { major: 7, minor: 20 }))).error, -E.EPROTO)
  t.equal((await call(P.Opcode.BATCH_FORGET, 0, struct(P.BatchForgetIn, { count: 1000 }))).error, -E.EINVAL)
  t.same(raw(request(P.Opcode.FORGET, 9, 1, struct(P.ForgetIn, { nlookup: 1 }))), [], 'FORGET is not answered')
  t.same(raw(request(P.Opcode.INTERRUPT, 11, 0, struct(P.InterruptIn, { unique: 9 }))), [], 'INTERRUPT is not answered')
  // Random bodies under every opcode: each request gets at most one answer and nothing throws.
  let seed = 1
  const rnd = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
  for (let i = 0; i < 2000; i++) {
    const opcode = rnd(50)
    if (opcode === P.Opcode.DESTROY) continue
    const body = Buffer.alloc(rnd(120))
    for (let j = 0; j < body.length; j++) body[j] = rnd(4) === 0 ? 0 : rnd(256)
    t.doesNotThrow(() => session.handle(request(opcode, 1_000_000 + i * 2, rnd(4), body)), { diagnostic: false })
  }
  t.ok(true, 'survived 2000 random requests')
})

t.test('Image.discard and Image.seek: whole blocks become holes and their own objects go; shared ones stay for the snapshot', async t => {
  const OS = 65536
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  const images = new ImageStore(objects)
  await images.open()
  t.teardown(async () => { await images.close(); await objects.close() })
  await images.create('a', 6 * OS, { objectSize: OS, copies: 1 })
  const img = images.openImage('a', true)
  await img.write(0, Buffer.alloc(6 * OS, 0x61))
  await images.snapshot('a', 's1') // blocks 0-5 now shared with s1
  await img.write(2 * OS, Buffer.alloc(2 * OS, 0x62)) // blocks 2 and 3 copied up: the image's own
  const before = (await objects.allocatedBytes()).objects

  // [OS + 100, 5 * OS - 100): the partial ends of blocks 1 and 4 get zeros, blocks 2-3 (own) and none else whole.
  await img.discard(OS + 100, 4 * OS - 200)
  const back = Buffer.alloc(6 * OS)
  await img.read(0, 6 * OS, back)
  t.ok(back.subarray(0, OS + 100).equals(Buffer.alloc(OS + 100, 0x61)), 'before the range: untouched')
  t.ok(back.subarray(OS + 100, 5 * OS - 100).equals(Buffer.alloc(4 * OS - 200)), 'the range reads zeros')
  t.ok(back.subarray(5 * OS - 100).equals(Buffer.alloc(OS + 100, 0x61)), 'after the range: untouched')
  t.equal(img.owners.owner(2), 0, 'block 2 is a hole')
  t.equal(img.owners.owner(3), 0, 'block 3 is a hole')
  // Blocks 2 and 3 were freed; blocks 1 and 4 got objects of their own for their zeroed parts.
  t.equal((await objects.allocatedBytes()).objects, before, 'two objects freed, two copied up for the partial ends')
  const snap = images.openSnapshot('a', 's1')
  const old = Buffer.alloc(6 * OS)
  await snap.read(0, 6 * OS, old)
  t.ok(old.equals(Buffer.alloc(6 * OS, 0x61)), 'the snapshot still reads what it held')
  await images.closeImage(snap)

  // A block still shared with the snapshot: it only stops pointing at it.
  await img.discard(5 * OS, OS)
  t.equal(img.owners.owner(5), 0, 'a shared block becomes a hole')
  const tail = Buffer.alloc(OS)
  await img.read(5 * OS, OS, tail)
  t.ok(tail.equals(Buffer.alloc(OS)), 'and reads zeros')
  await img.discard(7 * OS, OS)
  t.equal(img.size, 6 * OS, 'a range past the end changes nothing')

  t.equal(img.seek(0, false), 0, 'SEEK_DATA at 0: block 0 holds data')
  t.equal(img.seek(0, true), 2 * OS, 'SEEK_HOLE: the first hole is block 2')
  t.equal(img.seek(2 * OS + 5, false), 4 * OS, 'SEEK_DATA from inside a hole: the next block with data')
  t.equal(img.seek(4 * OS + 7, true), 5 * OS, 'SEEK_HOLE from inside data')
  t.equal(img.seek(5 * OS + 1, false), null, 'no data after: ENXIO')
  t.equal(img.seek(6 * OS, true), null, 'at the end: ENXIO')
  await images.closeImage(img, true)
})

t.test('FALLOCATE and LSEEK through the session: punch, zero range, mode 0, and what is refused', async t => {
  const { call } = await harness(t)
  const OS = 65536
  const created = await call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR, mode: 0o100644 }, 'f.img\0'))
  const node = P.EntryOutHead.decode(created.body).nodeid
  const fh = P.OpenOut.decode(created.body, P.EntryOutHead.size + P.Attr.size).fh
  const data = Buffer.alloc(4 * OS, 0x33)
  t.equal((await call(P.Opcode.WRITE, node, struct(P.WriteIn, { fh, offset: 0, size: data.length }, data))).error, 0)
  const falloc = async (mode: number, offset: number, length: number): Promise<number> =>
    (await call(P.Opcode.FALLOCATE, node, struct(P.FallocateIn, { fh, mode, offset, length }))).error
  const size = async (): Promise<number> => P.Attr.decode((await call(P.Opcode.GETATTR, node, struct(P.GetattrIn, {}))).body, P.AttrOutHead.size).size
  const seek = async (offset: number, whence: number): Promise<number> => {
    const r = await call(P.Opcode.LSEEK, node, struct(P.LseekIn, { fh, offset, whence }))
    return r.error !== 0 ? r.error : P.LseekOut.decode(r.body).offset
  }
  t.equal(await falloc(0x01 | 0x02, OS, OS), 0, 'PUNCH_HOLE | KEEP_SIZE')
  t.equal(await falloc(0x10, 2 * OS, OS), 0, 'ZERO_RANGE')
  t.equal(await size(), 4 * OS, 'the size is kept')
  const r = await call(P.Opcode.READ, node, struct(P.ReadIn, { fh, offset: 0, size: 4 * OS }))
  t.ok(r.body.subarray(OS, 3 * OS).equals(Buffer.alloc(2 * OS)) && r.body.subarray(0, OS).equals(Buffer.alloc(OS, 0x33)) && r.body.subarray(3 * OS).equals(Buffer.alloc(OS, 0x33)), 'the ranges read zeros, the rest is kept')
  t.equal(await seek(0, 4), OS, 'SEEK_HOLE')
  t.equal(await seek(OS, 3), 3 * OS, 'SEEK_DATA')
  t.equal(await seek(4 * OS, 3), -E.ENXIO, 'SEEK_DATA at the end: ENXIO')
  t.equal(await falloc(0, 0, 4 * OS), 0, 'mode 0 on an existing range succeeds')
  t.equal(await falloc(0, 4 * OS, OS), 0, 'mode 0 past the end')
  t.equal(await size(), 5 * OS, 'grows the image')
  t.equal(await falloc(0x10 | 0x01, 6 * OS, OS), 0, 'ZERO_RANGE | KEEP_SIZE past the end')
  t.equal(await size(), 5 * OS, 'does not grow it')
  t.equal(await falloc(0x08, 0, OS), -E.EOPNOTSUPP, 'COLLAPSE_RANGE: EOPNOTSUPP')
  t.equal(await falloc(0x20, 0, OS), -E.EOPNOTSUPP, 'INSERT_RANGE: EOPNOTSUPP')
  t.equal((await call(P.Opcode.LSEEK, node, struct(P.LseekIn, { fh, offset: 0, whence: 0 }))).error, -E.EINVAL, 'SEEK_SET is the kernel\'s own')
  t.equal((await call(P.Opcode.RELEASE, node, struct(P.ReleaseIn, { fh }))).error, 0)
})

t.test('COPY_FILE_RANGE: the daemon copies between images, up to the source\'s end', async t => {
  const { call } = await harness(t)
  const open = async (name: string): Promise<{ node: number, fh: number }> => {
    const c = await call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR, mode: 0o100644 }, `${name}\0`))
    return { node: P.EntryOutHead.decode(c.body).nodeid, fh: P.OpenOut.decode(c.body, P.EntryOutHead.size + P.Attr.size).fh }
  }
  const a = await open('a.img')
  const b = await open('b.img')
  const data = Buffer.alloc(3 * 1024 * 1024 + 5)
  for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff
  for (let off = 0; off < data.length; off += 1024 * 1024) {
    const piece = data.subarray(off, off + 1024 * 1024)
    t.equal((await call(P.Opcode.WRITE, a.node, struct(P.WriteIn, { fh: a.fh, offset: off, size: piece.length }, piece))).error, 0)
  }
  const r = await call(P.Opcode.COPY_FILE_RANGE, a.node, struct(P.CopyFileRangeIn, { fh_in: a.fh, off_in: 5, nodeid_out: b.node, fh_out: b.fh, off_out: 100, len: 10 * 1024 * 1024 }))
  t.equal(r.error, 0)
  t.equal(P.WriteOut.decode(r.body).size, data.length - 5, 'copied up to the end of the source')
  const back = await call(P.Opcode.READ, b.node, struct(P.ReadIn, { fh: b.fh, offset: 100, size: 1024 * 1024 }))
  t.ok(back.body.equals(data.subarray(5, 5 + 1024 * 1024)), 'the bytes landed at the destination offset')
  const past = await call(P.Opcode.COPY_FILE_RANGE, a.node, struct(P.CopyFileRangeIn, { fh_in: a.fh, off_in: data.length, nodeid_out: b.node, fh_out: b.fh, off_out: 0, len: 4096 }))
  t.equal(P.WriteOut.decode(past.body).size, 0, 'nothing to copy past the end')
})

t.test('a snapshot and its folder report the image\'s owner and mode as they are now, less write bits; the root the mode asked for', async t => {
  const objects = new LocalObjectStore(tmpDir(t))
  await objects.open()
  const images = new ImageStore(objects)
  await images.open()
  t.teardown(async () => { await images.close(); await objects.close() })
  const core = adapterCore(images, { createOptions: { objectSize: 65536, copies: 1 }, rootMode: 0o1777, log: () => {} })
  t.equal(core.getattr('/').mode, fs.constants.S_IFDIR | 0o1777, 'the root: the mode asked for')
  await images.create('vm.img', 65536, { objectSize: 65536, copies: 1 })
  await images.snapshot('vm.img', 's1')
  const owner = (p: string): { mode: number, uid: number, gid: number } => { const st = core.getattr(p); return { mode: st.mode & 0o7777, uid: st.uid, gid: st.gid } }
  t.same(owner('/vm.img'), { mode: 0o600, uid: 0, gid: 0 }, 'an image made without a mode: root\'s, 0600')
  t.same(owner('/.snapshots/vm.img/s1'), { mode: 0o400, uid: 0, gid: 0 })
  t.same(owner('/.snapshots/vm.img'), { mode: 0o500, uid: 0, gid: 0 }, 'the folder: r-x where the image has r')
  await core.chown('/vm.img', 107, 108)
  await core.chmod('/vm.img', 0o4764)
  t.same(owner('/.snapshots/vm.img/s1'), { mode: 0o4544, uid: 107, gid: 108 }, 'the snapshot follows a chown and chmod of its image, less write bits')
  t.same(owner('/.snapshots/vm.img'), { mode: 0o555, uid: 107, gid: 108 }, 'and so does its folder')
  t.equal(core.getattr('/.snapshots').mode, fs.constants.S_IFDIR | 0o755)
  // A handle open on the snapshot outlives the image deleted with its snapshots: the snapshot's own then.
  const fh = await core.open('/.snapshots/vm.img/s1', fs.constants.O_RDONLY)
  await core.unlink('/vm.img')
  const st = core.fgetattr(fh)
  t.same({ mode: st.mode & 0o7777, uid: st.uid, gid: st.gid }, { mode: 0o400, uid: 0, gid: 0 }, 'fstat of a snapshot whose image is gone: what it had when taken')
  await core.release(fh)
})

/** A new image through CREATE: its node id and open handle. */
async function createImage (call: Harness['call'], name: string): Promise<{ node: number, fh: number }> {
  const c = await call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR, mode: 0o100644 }, `${name}\0`))
  return { node: P.EntryOutHead.decode(c.body).nodeid, fh: P.OpenOut.decode(c.body, P.EntryOutHead.size + P.Attr.size).fh }
}

/** The kernel's INTERRUPT for request `target`: its unique is the target's with bit 0 set (FUSE_INT_REQ_BIT). */
function interrupt (target: number): Buffer {
  return request(P.Opcode.INTERRUPT, target + 1, 0, struct(P.InterruptIn, { unique: target }))
}

t.test('INTERRUPT: a READ is answered EINTR at once, a WRITE runs to its end; one for a request not here waits for it, else EAGAIN', async t => {
  const { call, session, raw, unclaimed, replyTo } = await harness(t)
  const { node, fh } = await createImage(call, 'i.img')
  const bytes = (fill: number): Buffer => Buffer.alloc(65536, fill)
  t.equal((await call(P.Opcode.WRITE, node, struct(P.WriteIn, { fh, offset: 0, size: 65536 }, bytes(0x61)))).error, 0)

  // The kernel sends INTERRUPT after its request; the image call is then still under way.
  let readOver!: () => void
  const over = new Promise<void>(resolve => { readOver = resolve })
  t.same(raw(request(P.Opcode.READ, 5000, node, struct(P.ReadIn, { fh, offset: 0, size: 65536 })), readOver), [], 'the READ is under way')
  t.same(raw(interrupt(5000)).map(r => P.OutHeader.decode(r)), [{ len: 16, error: 2 ** 32 - E.EINTR, unique: 5000 }], 'answered EINTR at once; the INTERRUPT itself gets no answer')
  unclaimed.length = 0
  await over
  t.same(unclaimed, [], 'the read, over now, is not answered again')

  const write = replyTo(5002)
  raw(request(P.Opcode.WRITE, 5002, node, struct(P.WriteIn, { fh, offset: 0, size: 65536 }, bytes(0x62))))
  t.same(raw(interrupt(5002)), [], 'a WRITE is not abandoned: the INTERRUPT changes nothing')
  const w = await write
  t.equal(w.error, 0, 'the WRITE is answered when done')
  t.equal(P.WriteOut.decode(w.body).size, 65536)
  t.ok((await call(P.Opcode.READ, node, struct(P.ReadIn, { fh, offset: 0, size: 65536 }))).body.equals(bytes(0x62)), 'and its bytes are in')

  // An INTERRUPT can overtake its request (two reader threads hand requests over independently).
  const early = replyTo(6000)
  t.same(raw(interrupt(6000)), [], 'an INTERRUPT for a request not here yet is held')
  raw(request(P.Opcode.READ, 6000, node, struct(P.ReadIn, { fh, offset: 0, size: 4096 })))
  t.equal((await early).error, -E.EINTR, 'and applies when the request arrives')

  // One whose request was answered already: EAGAIN at the next request (the kernel drops it).
  const stale = replyTo(7001)
  raw(interrupt(7000))
  t.equal((await call(P.Opcode.GETATTR, node, struct(P.GetattrIn, {}))).error, 0, 'the next request is served')
  t.equal((await stale).error, -E.EAGAIN, 'the held INTERRUPT is answered EAGAIN')
  t.same(session.stats().inFlight, {}, 'nothing left in flight')
})

t.test('node ids: LOOKUP and CREATE count, FORGET and BATCH_FORGET drop; unlinked and replaced names go once forgotten', async t => {
  const { call, session, raw } = await harness(t)
  t.equal(session.stats().nodes, 1, 'the root alone')
  const a = await createImage(call, 'a.img')
  const b = await createImage(call, 'b.img')
  const lookup = async (name: string): Promise<number> => P.EntryOutHead.decode((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from(`${name}\0`))).body).nodeid
  t.equal(await lookup('a.img'), a.node)
  t.equal(await lookup('a.img'), a.node, 'a.img: three lookups now')
  t.equal(session.stats().nodes, 3)
  for (const { node, fh } of [a, b]) t.equal((await call(P.Opcode.RELEASE, node, struct(P.ReleaseIn, { fh }))).error, 0)
  // b.img replaced by a rename and a.img under its new name: both nodes stay until forgotten.
  t.equal((await call(P.Opcode.RENAME, P.FUSE_ROOT_ID, struct(P.RenameIn, { newdir: P.FUSE_ROOT_ID }, 'a.img\0b.img\0'))).error, 0)
  t.equal(await lookup('b.img'), a.node, 'the node followed its rename')
  raw(request(P.Opcode.FORGET, 8000, b.node, struct(P.ForgetIn, { nlookup: 1 })))
  t.equal(session.stats().nodes, 2, 'the replaced one is gone once forgotten')
  raw(request(P.Opcode.FORGET, 8002, a.node, struct(P.ForgetIn, { nlookup: 3 })))
  t.equal(session.stats().nodes, 2, 'one lookup of four left')
  raw(request(P.Opcode.BATCH_FORGET, 8004, 0, Buffer.concat([struct(P.BatchForgetIn, { count: 2 }), struct(P.ForgetOne, { nodeid: a.node, nlookup: 1 }), struct(P.ForgetOne, { nodeid: 12345, nlookup: 1 })])))
  t.equal(session.stats().nodes, 1, 'the root alone again; a node never given is ignored')
  t.equal(await lookup('b.img') > b.node, true, 'a forgotten node\'s id is never given again')
})

t.test('an OPEN or CREATE answered ETIMEDOUT before it was done closes the handle it opened and forgets its node', async t => {
  let letGo!: () => void
  let gate: Promise<void> = Promise.resolve()
  const hold = (): void => { gate = new Promise(resolve => { letGo = resolve }) }
  let releases = 0
  const { call, session, images, logs } = await harness(t, {
    ioTimeout: 50,
    wrap: core => ({
      ...core,
      open: async (path, flags) => { await gate; return await core.open(path, flags) },
      create: async (path, mode, caller) => { await gate; return await core.create(path, mode, caller) },
      release: async fh => { await core.release(fh); releases++ }
    })
  })
  // Made and looked up without a call that could outlast the 50 ms (a CREATE syncs).
  await images.create('a.img', 0, { objectSize: 65536, copies: 1 })
  const a = { node: P.EntryOutHead.decode((await call(P.Opcode.LOOKUP, P.FUSE_ROOT_ID, Buffer.from('a.img\0'))).body).nodeid }

  // The session's sweeper does not hold the process open (a daemon has its mount for that).
  const alive = setInterval(() => {}, 1000)
  t.teardown(() => clearInterval(alive))
  hold()
  const created = call(P.Opcode.CREATE, P.FUSE_ROOT_ID, struct(P.CreateIn, { flags: fs.constants.O_RDWR, mode: 0o100644 }, 'b.img\0'))
  t.equal((await created).error, -E.ETIMEDOUT, 'a CREATE held past the I/O timeout is answered ETIMEDOUT')
  const opened = call(P.Opcode.OPEN, a.node, struct(P.OpenIn, { flags: fs.constants.O_RDWR }))
  t.equal((await opened).error, -E.ETIMEDOUT, 'so is an OPEN')
  letGo()
  for (let i = 0; i < 500 && releases < 2; i++) await new Promise(resolve => setTimeout(resolve, 10))
  t.equal(releases, 2, 'the session released both handles the kernel never got')
  t.same(images.names().sort(), ['a.img', 'b.img'], 'both went on: b.img was made')
  t.same(images.list().filter(i => i.openCount > 0 || i.openWriters > 0).map(i => i.name), [], 'and the handles they opened were closed')
  t.equal(session.stats().nodes, 2, 'b.img\'s node, never given to the kernel, is forgotten (the root and a.img remain)')
  t.ok(logs.some(l => /create took longer than 50 ms/.test(l)), 'the timeout is logged')
})

t.test('DESTROY is answered, and nothing after it', async t => {
  const { call, raw } = await harness(t)
  const { node } = await createImage(call, 'd.img')
  const destroyed = raw(request(P.Opcode.DESTROY, 9000, 0, Buffer.alloc(0)))
  t.same(destroyed.map(r => P.OutHeader.decode(r)), [{ len: 16, error: 0, unique: 9000 }], 'DESTROY gets its empty reply')
  t.same(raw(request(P.Opcode.GETATTR, 9002, node, struct(P.GetattrIn, {}))), [], 'a request after it is not answered: the connection is going')
})
