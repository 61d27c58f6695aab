// A reader of /dev/fuse: loops on a blocking read, so that waiting for the kernel never blocks
// the event loop. Each request goes to the main thread (where images and the network live) in
// one message, its bytes transferred, not copied; what this thread can answer alone (an
// operation Sheep does not serve, a request whose length is wrong) it answers itself.
// A transferred buffer comes back once its request is done (a message to this thread, taken
// before the next allocation), so that large writes do not cost a new 1 MiB buffer each.
// Ends when the read fails with ENODEV: the filesystem was unmounted.

import fs from 'node:fs'
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads'
import { ERRNO } from '../errno'
import { errorReply, InHeader, REQUEST_BUFFER } from './protocol'

export interface WorkerData {
  fd: number
  /** Opcodes the main thread serves. */
  served: number[]
}

/** What a worker posts: a request (its bytes in `buf`), or why it stopped reading. */
export type WorkerMessage =
  | { type: 'request', buf: ArrayBuffer, length: number }
  | { type: 'end', error: string | null }

/**
 * Requests up to this size are copied out, and the big buffer takes the next one: a fresh
 * 1 MiB buffer for every 4 KiB write cost more (allocation, page faults, garbage collection of
 * external memory) than the copy. Larger ones are transferred and a new buffer allocated.
 */
const COPY_UP_TO = 128 * 1024 + 4096

function main (port: NonNullable<typeof parentPort>, { fd, served }: WorkerData): void {
  const known = new Set(served)
  let big = new Uint8Array(REQUEST_BUFFER)
  const reply = (buf: Buffer): void => {
    try { fs.writeSync(fd, buf) } catch {} // ENOENT: interrupted; ENODEV: unmounted
  }
  for (;;) {
    let n: number
    try {
      n = fs.readSync(fd, big)
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code
      // EINTR: a signal; ENOENT: the request was interrupted before it was read. Read again.
      if (code === 'EINTR' || code === 'EAGAIN' || code === 'ENOENT') continue
      port.postMessage({ type: 'end', error: code === 'ENODEV' ? null : String((err as Error).message) } satisfies WorkerMessage)
      return
    }
    const head = Buffer.from(big.buffer, 0, n)
    if (n >= InHeader.size) {
      const h = InHeader.decode(head)
      if (h.len === n && !known.has(h.opcode)) {
        reply(errorReply(h.unique, ERRNO.ENOSYS))
        continue
      }
    }
    let out: ArrayBuffer
    if (n <= COPY_UP_TO) {
      out = big.buffer.slice(0, n)
    } else {
      out = big.buffer
      const back = receiveMessageOnPort(port)?.message as ArrayBuffer | undefined
      big = new Uint8Array(back ?? new ArrayBuffer(REQUEST_BUFFER))
    }
    port.postMessage({ type: 'request', buf: out, length: n } satisfies WorkerMessage, [out])
  }
}

if (parentPort !== null) main(parentPort, workerData as WorkerData)
