// The kernel session's requests: each decoded from the kernel's bytes, served by the adapter
// core and answered in the kernel's bytes. Runs on the main thread, where the images and the
// network live; ./worker.ts reads the requests off /dev/fuse and hands them over.

import fs from 'node:fs'
import { SheepError } from '../../errors'
import { type FsCore, type Stat, UNCHANGED_ID } from '../adapter'
import { ERRNO, failedOp } from '../errno'
import { NodeTable } from './nodes'
import {
  AccessIn, Attr, AttrOutHead, BatchForgetIn, CopyFileRangeIn, CreateIn, DT_DIR, DT_REG, EntryOutHead, FallocateIn, Fattr,
  FlushIn, FOPEN_DIRECT_IO, ForgetIn, ForgetOne, FsyncIn, FUSE_GETATTR_FH, FUSE_NAME_MAX, GetattrIn, GetxattrIn, GetxattrOut,
  InHeader, InitIn, InterruptIn, LseekIn, LseekOut, MalformedRequest, MAX_WRITE, Opcode, OpenIn, OpenOut, OutHeader, ReadIn,
  ReleaseIn, Rename2In, RenameIn, RENAME_NOREPLACE, REQUEST_BUFFER, SetattrIn, SetxattrIn, StatfsOut, UNKNOWN_INO, WriteIn,
  WriteOut, direntSize, encodeDirent, errorReply, finishReply, joinTime, negotiateInit, opName, readName as readRawName,
  replyBuffer, splitTime
} from './protocol'

type Header = ReturnType<typeof InHeader.decode>
/** A reply to send, a negative errno to answer with, or null: no reply (FORGET, INTERRUPT). */
type Answer = Buffer | number | null
type Handler = (h: Header, body: Buffer) => Answer | Promise<Answer>

export interface SessionOptions {
  /** Milliseconds after which a request still in the daemon is answered ETIMEDOUT (as fuse-native's timeout). */
  ioTimeout: number
  log: (line: string) => void
}

/** Requests served since the mount and held now, by operation, and node ids the kernel holds (for `sheep status`). */
export interface KernelStats {
  inFlight: Record<string, number>
  requests: Record<string, { count: number, bytes: number, maxBytes: number }>
  nodes: number
}

interface Pending { op: string, opcode: number, started: number }
/** An INTERRUPT for a request this session has not seen: its own unique, and when it came. */
interface HeldInterrupt { unique: number, at: number }

/**
 * Requests answered EINTR when their caller is interrupted (FUSE_INTERRUPT), their call on the
 * image API left to finish alone: they change nothing, and a READ's reply buffer is taken back
 * only once that call is over. Every other request runs to its end and is answered then, as if
 * no interrupt had come: a WRITE, FALLOCATE or COPY_FILE_RANGE may already have reached an
 * object, and EINTR would tell the caller that nothing changed; an OPEN or CREATE answered EINTR
 * would leave a handle the kernel never releases; a SETATTR, RENAME, UNLINK, FSYNC or RELEASE
 * may be half done. The kernel waits for their answer (for a request already in the daemon it
 * waits even when the caller was killed), which the I/O timeout bounds.
 */
const INTERRUPTIBLE = new Set<number>([Opcode.READ, Opcode.STATFS])
/** INTERRUPTs kept waiting for their request at most; past it the oldest is answered EAGAIN. */
const HELD_INTERRUPTS = 64

const O_ACCMODE = 3
const O_TRUNC = fs.constants.O_TRUNC
/** Where a reply's payload starts. */
const OUT = OutHeader.size
/** Size of the reusable READ reply buffers: the largest read and its header. */
const BIG_REPLY = OUT + MAX_WRITE
/** How many free ones are kept: about as many as reads in flight at once. */
const SPARE_REPLIES = 16

/** A name from a request; ENAMETOOLONG past what the kernel forwarded before it took longer names. */
function readName (buf: Buffer, off: number): { name: string, next: number } {
  const r = readRawName(buf, off)
  if (r.next - 1 - off > FUSE_NAME_MAX) throw new SheepError('ENAMETOOLONG', `a name of ${r.next - 1 - off} bytes`)
  return r
}

export class KernelSession {
  private readonly nodes = new NodeTable()
  /** Open folders: their listing, taken at the first READDIR (offset 0) and kept for the rest. */
  private readonly dirs = new Map<number, Array<{ name: Buffer, type: number, path: string }> | null>()
  private nextDir = 1
  private readonly pending = new Map<number, Pending>()
  /**
   * INTERRUPTs whose request is not here, by its unique: either it was answered already, or the
   * other reader thread has not handed it over yet (an INTERRUPT can overtake its request).
   */
  private readonly interrupts = new Map<number, HeldInterrupt>()
  private readonly sweepEvery: number
  private readonly counts = new Map<string, { count: number, bytes: number, maxBytes: number }>()
  /** READ reply buffers of BIG_REPLY bytes: every one made, and those free for the next read. */
  private readonly bigReplies = new WeakSet<ArrayBufferLike>()
  private readonly spareReplies: Buffer[] = []
  private readonly handlers: Map<number, Handler>
  private readonly sweeper: NodeJS.Timeout
  /** Set when the kernel sent DESTROY or the session was closed: nothing more is answered. */
  private closed = false
  /** Settles once INIT is answered: resolved if accepted, rejected if refused (the mount cannot be used). */
  readonly initialized: Promise<void>
  private initDone!: (err: SheepError | null) => void

  /**
   * `send` writes one reply to /dev/fuse. It must not throw: a reply to an interrupted request
   * fails with ENOENT and one after the unmount with ENODEV, and both are expected.
   */
  constructor (private readonly core: FsCore, private readonly send: (reply: Buffer) => void, private readonly opts: SessionOptions) {
    this.initialized = new Promise((resolve, reject) => { this.initDone = err => err === null ? resolve() : reject(err) })
    // Nobody may be waiting (a unit test, or a session closed before): not an unhandled rejection.
    this.initialized.catch(() => {})
    this.handlers = this.buildHandlers()
    this.sweepEvery = Math.min(1000, opts.ioTimeout)
    this.sweeper = setInterval(() => this.expire(), this.sweepEvery).unref()
  }

  /** The opcodes this session serves; workers answer any other ENOSYS without a thread hop. */
  get served (): number[] {
    return [...this.handlers.keys()]
  }

  /**
   * Serves one request: the bytes one read of /dev/fuse returned. Never throws. `finished` is
   * called once nothing uses `buf` any more (its call on the image API is over, even one that
   * was answered ETIMEDOUT before), so that its owner may reuse it.
   */
  handle (buf: Buffer, finished?: () => void): void {
    let h: Header
    try {
      h = InHeader.decode(buf)
    } catch {
      this.malformed(buf, 'shorter than its header')
      finished?.()
      return
    }
    if (h.len !== buf.length) {
      this.malformed(buf, `its header says ${h.len} bytes, ${buf.length} came`)
      finished?.()
      return
    }
    const op = opName(h.opcode)
    this.count(op, h.opcode === Opcode.WRITE || h.opcode === Opcode.READ ? this.ioSize(buf) : buf.length)
    const handler = this.handlers.get(h.opcode)
    if (handler === undefined) {
      this.answer(h.unique, ERRNO.ENOSYS)
      finished?.()
      return
    }
    const body = buf.subarray(InHeader.size)
    const entry: Pending = { op, opcode: h.opcode, started: Date.now() }
    this.pending.set(h.unique, entry)
    const done = (answer: Answer): void => {
      if (this.pending.get(h.unique) === entry) {
        this.pending.delete(h.unique)
        this.answer(h.unique, answer)
      } else if (answer instanceof Buffer) { // answered ETIMEDOUT or EINTR already
        this.dropped(h, answer)
      }
      if (answer instanceof Buffer) this.reuse(answer)
      finished?.()
    }
    const fail = (err: unknown): void => done(err instanceof MalformedRequest ? ERRNO.EINVAL : failedOp(op, this.describe(h.nodeid), err, this.opts.log))
    let result
    try {
      result = handler(h, body)
    } catch (err) {
      fail(err)
      return
    }
    if (result instanceof Promise) result.then(done, fail)
    else done(result)
    if (this.interrupts.size > 0 && h.opcode !== Opcode.INTERRUPT) this.arrived(h.unique)
  }

  /**
   * FUSE_INTERRUPT for request `target`: answered EINTR now if it is one that may be abandoned
   * (INTERRUPTIBLE), else left to finish. One not here is held until it arrives (see arrived).
   */
  private interrupt (target: number, unique: number): void {
    const p = this.pending.get(target)
    if (p === undefined) {
      this.interrupts.set(target, { unique, at: Date.now() })
      if (this.interrupts.size > HELD_INTERRUPTS) this.interruptNotFound()
      return
    }
    if (!INTERRUPTIBLE.has(p.opcode)) return
    this.pending.delete(target)
    this.answer(target, ERRNO.EINTR)
  }

  /**
   * A request arrived: an INTERRUPT held for it applies now; otherwise the oldest one held is
   * answered EAGAIN (as libfuse does). The kernel sends that INTERRUPT again if its request is
   * still waiting, and drops the answer if not (its write then fails with ENOENT).
   */
  private arrived (unique: number): void {
    const held = this.interrupts.get(unique)
    if (held === undefined) {
      this.interruptNotFound()
      return
    }
    this.interrupts.delete(unique)
    if (this.pending.has(unique)) this.interrupt(unique, held.unique)
  }

  private interruptNotFound (): void {
    const oldest = this.interrupts.entries().next().value
    if (oldest === undefined) return
    this.interrupts.delete(oldest[0])
    this.answer(oldest[1].unique, ERRNO.EAGAIN)
  }

  /**
   * A reply the kernel never got, as the request was answered ETIMEDOUT or EINTR before it was
   * done: what it handed out is taken back, or the handle would stay open (the image's writers
   * counted, a stop refused) and the node's lookup never be forgotten.
   */
  private dropped (h: Header, reply: Buffer): void {
    let node: number
    let fh: number
    if (h.opcode === Opcode.CREATE) {
      node = EntryOutHead.decode(reply, OUT).nodeid
      fh = OpenOut.decode(reply, OUT + EntryOutHead.size + Attr.size).fh
      this.nodes.forget(node, 1)
    } else if (h.opcode === Opcode.OPEN) {
      node = h.nodeid
      fh = OpenOut.decode(reply, OUT).fh
    } else {
      return
    }
    this.nodes.closed(node, fh)
    this.core.release(fh).catch(err => this.opts.log(`fuse: closing handle ${fh}, which ${opName(h.opcode)} opened after its caller was answered: ${(err as Error).message}`))
  }

  /**
   * A buffer for a READ reply of `size` bytes. Large ones come from a few kept for reuse: a
   * fresh 1 MiB buffer for every read (allocation, page faults, garbage collection of external
   * memory) cost more than the read itself.
   */
  private readReply (size: number): Buffer {
    if (size < BIG_REPLY / 2) return replyBuffer(size)
    const spare = this.spareReplies.pop()
    if (spare !== undefined) return spare
    const buf = Buffer.allocUnsafeSlow(BIG_REPLY)
    this.bigReplies.add(buf.buffer)
    return buf
  }

  /** Takes back a reply buffer once it was sent (or dropped). */
  private reuse (reply: Buffer): void {
    if (this.bigReplies.has(reply.buffer) && this.spareReplies.length < SPARE_REPLIES) this.spareReplies.push(Buffer.from(reply.buffer))
  }

  stats (): KernelStats {
    const inFlight: Record<string, number> = {}
    for (const p of this.pending.values()) inFlight[p.op] = (inFlight[p.op] ?? 0) + 1
    return { inFlight, requests: Object.fromEntries(this.counts), nodes: this.nodes.size }
  }

  /** Stops answering: after the unmount, or when the kernel said DESTROY. */
  close (): void {
    this.closed = true
    clearInterval(this.sweeper)
  }

  private answer (unique: number, answer: Answer): void {
    if (answer === null || this.closed) return
    this.send(typeof answer === 'number' ? errorReply(unique, answer) : answer)
  }

  private malformed (buf: Buffer, why: string): void {
    this.opts.log(`fuse: a malformed request (${buf.length} bytes) answered EIO: ${why}`)
    // The unique id sits at bytes 8-15; without them there is no one to answer.
    if (buf.length >= 16) this.answer(buf.readUInt32LE(8) + buf.readUInt32LE(12) * 0x100000000, ERRNO.EIO)
  }

  private ioSize (buf: Buffer): number {
    return buf.length >= InHeader.size + 20 ? buf.readUInt32LE(InHeader.size + 16) : 0
  }

  private count (op: string, bytes: number): void {
    const c = this.counts.get(op)
    if (c === undefined) this.counts.set(op, { count: 1, bytes, maxBytes: bytes })
    else {
      c.count++
      c.bytes += bytes
      if (bytes > c.maxBytes) c.maxBytes = bytes
    }
  }

  /**
   * Answers ETIMEDOUT what has been in the daemon longer than the I/O timeout, and EAGAIN an
   * INTERRUPT held a whole sweep while no request came.
   */
  private expire (): void {
    const now = Date.now()
    for (const [target, held] of this.interrupts) {
      if (now - held.at < this.sweepEvery) continue
      this.interrupts.delete(target)
      this.answer(held.unique, ERRNO.EAGAIN)
    }
    for (const [unique, p] of this.pending) {
      if (now - p.started < this.opts.ioTimeout) continue
      this.pending.delete(unique)
      this.opts.log(`fuse: ${p.op} took longer than ${this.opts.ioTimeout} ms: answered ETIMEDOUT`)
      this.answer(unique, ERRNO.ETIMEDOUT)
    }
  }

  private describe (nodeid: number): string {
    try {
      return this.nodes.path(nodeid)
    } catch {
      return `node ${nodeid}`
    }
  }

  private attr (st: Stat, ino: number, buf: Buffer, off: number): void {
    const [atime, atimensec] = splitTime(st.atime)
    const [mtime, mtimensec] = splitTime(st.mtime)
    const [ctime, ctimensec] = splitTime(st.ctime)
    Attr.encode({ ino, size: st.size, blocks: st.blocks, atime, mtime, ctime, atimensec, mtimensec, ctimensec, mode: st.mode, nlink: st.nlink, uid: st.uid, gid: st.gid, blksize: st.blksize }, buf, off)
  }

  /**
   * fuse_entry_out for `path`, counted as one lookup of its node. Entry and attribute timeouts
   * are 0: another host may resize, rename or delete an image at any time.
   */
  private entry (path: string, st: Stat, buf: Buffer, off: number): number {
    const nodeid = this.nodes.lookedUp(path)
    EntryOutHead.encode({ nodeid }, buf, off)
    this.attr(st, nodeid, buf, off + EntryOutHead.size)
    return nodeid
  }

  private attrReply (h: Header, st: Stat): Buffer {
    const out = replyBuffer(AttrOutHead.size + Attr.size)
    AttrOutHead.encode({}, out, OUT)
    this.attr(st, h.nodeid, out, OUT + AttrOutHead.size)
    return finishReply(out, h.unique, AttrOutHead.size + Attr.size)
  }

  private empty (h: Header): Buffer {
    return finishReply(replyBuffer(0), h.unique, 0)
  }

  private buildHandlers (): Map<number, Handler> {
    const core = this.core
    const nodes = this.nodes
    const entrySize = EntryOutHead.size + Attr.size
    const handlers: Array<[number, Handler]> = [
      [Opcode.INIT, (h, body) => {
        try {
          const reply = negotiateInit(InitIn.decode(body))
          const out = replyBuffer(reply.length)
          reply.copy(out, OUT)
          this.initDone(null)
          return finishReply(out, h.unique, reply.length)
        } catch (err) {
          this.opts.log(`fuse: INIT refused: ${(err as Error).message}`)
          this.initDone(new SheepError('EPROTO', `the kernel's FUSE INIT was refused: ${(err as Error).message}`))
          return ERRNO.EPROTO
        }
      }],
      [Opcode.DESTROY, h => {
        const reply = this.empty(h)
        this.send(reply)
        this.close()
        return null
      }],
      [Opcode.INTERRUPT, (h, body) => { this.interrupt(InterruptIn.decode(body).unique, h.unique); return null }],
      [Opcode.FORGET, (h, body) => { nodes.forget(h.nodeid, ForgetIn.decode(body).nlookup); return null }],
      [Opcode.BATCH_FORGET, (_h, body) => {
        const { count } = BatchForgetIn.decode(body)
        if (BatchForgetIn.size + count * ForgetOne.size > body.length) throw new MalformedRequest(`BATCH_FORGET of ${count} in ${body.length} bytes`)
        for (let i = 0; i < count; i++) {
          const f = ForgetOne.decode(body, BatchForgetIn.size + i * ForgetOne.size)
          nodes.forget(f.nodeid, f.nlookup)
        }
        return null
      }],
      [Opcode.LOOKUP, (h, body) => {
        const path = nodes.child(h.nodeid, readName(body, 0).name)
        const st = core.getattr(path)
        const out = replyBuffer(entrySize)
        this.entry(path, st, out, OUT)
        return finishReply(out, h.unique, entrySize)
      }],
      [Opcode.GETATTR, (h, body) => {
        const g = GetattrIn.decode(body)
        const fh = (g.getattr_flags & FUSE_GETATTR_FH) !== 0 ? g.fh : nodes.handleOfNameless(h.nodeid)
        return this.attrReply(h, fh !== undefined ? core.fgetattr(fh) : core.getattr(nodes.path(h.nodeid)))
      }],
      [Opcode.SETATTR, async (h, body) => {
        const s = SetattrIn.decode(body)
        const byHandle = (s.valid & Fattr.FH) !== 0
        const path = (): string => nodes.path(h.nodeid)
        if ((s.valid & Fattr.MODE) !== 0) await core.chmod(path(), s.mode)
        if ((s.valid & (Fattr.UID | Fattr.GID)) !== 0) {
          await core.chown(path(), (s.valid & Fattr.UID) !== 0 ? s.uid : UNCHANGED_ID, (s.valid & Fattr.GID) !== 0 ? s.gid : UNCHANGED_ID)
        }
        // Images keep one time (mtime): atime alone changes nothing.
        if ((s.valid & Fattr.MTIME_NOW) !== 0) await core.utimens(path(), Date.now())
        else if ((s.valid & Fattr.MTIME) !== 0) await core.utimens(path(), joinTime(s.mtime, s.mtimensec))
        if ((s.valid & Fattr.SIZE) !== 0) {
          if (byHandle) await core.ftruncate(s.fh, s.size)
          else await core.truncate(path(), s.size)
        }
        return this.attrReply(h, byHandle ? core.fgetattr(s.fh) : core.getattr(path()))
      }],
      [Opcode.ACCESS, (h, body) => { AccessIn.decode(body); core.access(nodes.path(h.nodeid)); return this.empty(h) }],
      [Opcode.STATFS, async h => {
        const s = await core.statfs()
        const out = replyBuffer(StatfsOut.size)
        StatfsOut.encode({ blocks: s.blocks, bfree: s.bfree, bavail: s.bavail, files: s.files, ffree: s.ffree, bsize: s.bsize, namelen: s.namemax, frsize: s.frsize }, out, OUT)
        return finishReply(out, h.unique, StatfsOut.size)
      }],
      [Opcode.OPEN, async (h, body) => {
        const { flags } = OpenIn.decode(body)
        const fh = await core.open(nodes.path(h.nodeid), flags)
        // ATOMIC_O_TRUNC: the kernel leaves O_TRUNC to the open instead of sending a SETATTR.
        if ((flags & O_TRUNC) !== 0 && (flags & O_ACCMODE) !== fs.constants.O_RDONLY) {
          try {
            await core.ftruncate(fh, 0)
          } catch (err) {
            await core.release(fh)
            throw err
          }
        }
        return this.opened(h, fh)
      }],
      [Opcode.CREATE, async (h, body) => {
        const c = CreateIn.decode(body)
        const path = nodes.child(h.nodeid, readName(body, CreateIn.size).name)
        // The image is the caller's (the header's fsuid and fsgid), as a file on ext4 would be.
        const fh = await core.create(path, c.mode & ~c.umask, { uid: h.uid, gid: h.gid })
        const out = replyBuffer(entrySize + OpenOut.size)
        this.nodes.opened(this.entry(path, core.fgetattr(fh), out, OUT), fh)
        OpenOut.encode({ fh, open_flags: FOPEN_DIRECT_IO }, out, OUT + entrySize)
        return finishReply(out, h.unique, entrySize + OpenOut.size)
      }],
      [Opcode.READ, async (h, body) => {
        const r = ReadIn.decode(body)
        if (r.size > MAX_WRITE) throw new MalformedRequest(`a READ of ${r.size} bytes, past max_read`)
        const out = this.readReply(r.size)
        const n = await core.read(r.fh, r.offset, r.size, out.subarray(OUT, OUT + r.size))
        return finishReply(out, h.unique, n)
      }],
      [Opcode.WRITE, async (h, body) => {
        const w = WriteIn.decode(body)
        if (WriteIn.size + w.size !== body.length) throw new MalformedRequest(`a WRITE of ${w.size} bytes carries ${body.length - WriteIn.size}`)
        const n = await core.write(w.fh, w.offset, body.subarray(WriteIn.size))
        const out = replyBuffer(WriteOut.size)
        WriteOut.encode({ size: n }, out, OUT)
        return finishReply(out, h.unique, WriteOut.size)
      }],
      [Opcode.FALLOCATE, async (h, body) => {
        const f = FallocateIn.decode(body)
        await core.fallocate(f.fh, f.mode, f.offset, f.length)
        return this.empty(h)
      }],
      [Opcode.LSEEK, (h, body) => {
        const l = LseekIn.decode(body)
        const out = replyBuffer(LseekOut.size)
        LseekOut.encode({ offset: core.lseek(l.fh, l.offset, l.whence) }, out, OUT)
        return finishReply(out, h.unique, LseekOut.size)
      }],
      [Opcode.COPY_FILE_RANGE, async (h, body) => {
        const c = CopyFileRangeIn.decode(body)
        const n = await core.copyFileRange(c.fh_in, c.off_in, c.fh_out, c.off_out, c.len)
        const out = replyBuffer(WriteOut.size)
        WriteOut.encode({ size: n }, out, OUT)
        return finishReply(out, h.unique, WriteOut.size)
      }],
      [Opcode.FLUSH, async (h, body) => { await core.flush(FlushIn.decode(body).fh); return this.empty(h) }],
      [Opcode.FSYNC, async (h, body) => { await core.fsync(FsyncIn.decode(body).fh); return this.empty(h) }],
      [Opcode.RELEASE, async (h, body) => {
        const { fh } = ReleaseIn.decode(body)
        nodes.closed(h.nodeid, fh)
        await core.release(fh)
        return this.empty(h)
      }],
      [Opcode.OPENDIR, (h, body) => {
        OpenIn.decode(body)
        core.readdir(nodes.path(h.nodeid)) // ENOTDIR, ENOENT now rather than at READDIR
        const fh = this.nextDir++
        this.dirs.set(fh, null)
        const out = replyBuffer(OpenOut.size)
        OpenOut.encode({ fh }, out, OUT)
        return finishReply(out, h.unique, OpenOut.size)
      }],
      [Opcode.READDIR, (h, body) => this.readdir(h, ReadIn.decode(body))],
      [Opcode.RELEASEDIR, (h, body) => { this.dirs.delete(ReleaseIn.decode(body).fh); return this.empty(h) }],
      [Opcode.FSYNCDIR, h => this.empty(h)],
      [Opcode.UNLINK, async (h, body) => {
        const path = nodes.child(h.nodeid, readName(body, 0).name)
        await core.unlink(path)
        nodes.removed(path)
        return this.empty(h)
      }],
      [Opcode.RMDIR, (h, body) => core.rmdir(nodes.child(h.nodeid, readName(body, 0).name))],
      [Opcode.MKDIR, () => core.mkdir()],
      [Opcode.MKNOD, () => core.mknod()],
      [Opcode.SYMLINK, () => core.symlink()],
      [Opcode.LINK, () => core.link()],
      [Opcode.RENAME, async (h, body) => await this.rename(h, RenameIn.decode(body).newdir, 0, body, RenameIn.size)],
      [Opcode.RENAME2, async (h, body) => {
        const r = Rename2In.decode(body)
        return await this.rename(h, r.newdir, r.flags, body, Rename2In.size)
      }],
      [Opcode.SETXATTR, async (h, body) => {
        const s = SetxattrIn.decode(body)
        const { name, next } = readName(body, SetxattrIn.size)
        if (next + s.size > body.length) throw new MalformedRequest(`a SETXATTR value of ${s.size} bytes in ${body.length - next}`)
        await core.setxattr(nodes.path(h.nodeid), name, body.subarray(next, next + s.size), s.flags)
        return this.empty(h)
      }],
      [Opcode.GETXATTR, (h, body) => {
        const { size } = GetxattrIn.decode(body)
        const value = core.getxattr(nodes.path(h.nodeid), readName(body, GetxattrIn.size).name)
        return value === null ? ERRNO.ENODATA : this.sized(h, size, value)
      }],
      [Opcode.LISTXATTR, (h, body) => {
        const { size } = GetxattrIn.decode(body)
        return this.sized(h, size, Buffer.from(core.listxattr(nodes.path(h.nodeid)).map(n => n + '\0').join('')))
      }],
      [Opcode.REMOVEXATTR, async (h, body) => {
        await core.removexattr(nodes.path(h.nodeid), readName(body, 0).name)
        return this.empty(h)
      }]
    ]
    return new Map(handlers)
  }

  private opened (h: Header, fh: number): Buffer {
    this.nodes.opened(h.nodeid, fh)
    const out = replyBuffer(OpenOut.size)
    // Direct I/O: no page cache on this host, as another host may write the image (live migration).
    OpenOut.encode({ fh, open_flags: FOPEN_DIRECT_IO }, out, OUT)
    return finishReply(out, h.unique, OpenOut.size)
  }

  /** GETXATTR and LISTXATTR: the size alone when asked with size 0, ERANGE when it does not fit. */
  private sized (h: Header, size: number, value: Buffer): Answer {
    if (size === 0) {
      const out = replyBuffer(GetxattrOut.size)
      GetxattrOut.encode({ size: value.length }, out, OUT)
      return finishReply(out, h.unique, GetxattrOut.size)
    }
    if (value.length > size) return ERRNO.ERANGE
    const out = replyBuffer(value.length)
    value.copy(out, OUT)
    return finishReply(out, h.unique, value.length)
  }

  private async rename (h: Header, newdir: number, flags: number, body: Buffer, off: number): Promise<Answer> {
    if ((flags & ~RENAME_NOREPLACE) !== 0) return ERRNO.EINVAL // RENAME_EXCHANGE, RENAME_WHITEOUT
    const old = readName(body, off)
    const from = this.nodes.child(h.nodeid, old.name)
    const to = this.nodes.child(newdir, readName(body, old.next).name)
    if ((flags & RENAME_NOREPLACE) !== 0 && this.exists(to)) throw SheepError.exists(to)
    await this.core.rename(from, to)
    this.nodes.renamed(from, to)
    return this.empty(h)
  }

  private exists (path: string): boolean {
    try {
      this.core.getattr(path)
      return true
    } catch (err) {
      if (err instanceof SheepError && err.code === 'ENOENT') return false
      throw err
    }
  }

  /** As many entries from `offset` as fit in `size` bytes; each entry's off is the offset of the next. */
  private readdir (h: Header, r: ReturnType<typeof ReadIn.decode>): Answer {
    if (!this.dirs.has(r.fh)) throw new MalformedRequest(`READDIR of folder handle ${r.fh}, which is not open`)
    let list = this.dirs.get(r.fh) ?? null
    if (list === null || r.offset === 0) {
      const dir = this.nodes.path(h.nodeid)
      list = this.core.readdir(dir).map(e => ({ name: Buffer.from(e.name), type: e.dir ? DT_DIR : DT_REG, path: dir === '/' ? `/${e.name}` : `${dir}/${e.name}` }))
      this.dirs.set(r.fh, list)
    }
    const size = Math.min(r.size, REQUEST_BUFFER)
    const out = replyBuffer(size)
    let at = OUT
    for (let i = r.offset; i < list.length; i++) {
      const e = list[i] as { name: Buffer, type: number, path: string }
      if (at - OUT + direntSize(e.name.length) > size) break
      at = encodeDirent({ ino: this.nodes.idOf(e.path) ?? UNKNOWN_INO, off: i + 1, type: e.type, name: e.name }, out, at)
    }
    return finishReply(out, h.unique, at - OUT)
  }
}
