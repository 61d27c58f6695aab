// A reader of /dev/fuse: loops on a blocking read, so that waiting for the kernel never blocks
// the event loop. Each request goes to the main thread (where images and the network live) in
// one message, its bytes transferred, not copied; what this thread can answer alone (an
// operation Sheep does not serve, a request whose length is wrong) it answers itself.
// A transferred buffer comes back once its request is done (a message to this thread, taken
// before the next allocation), so that large writes do not cost a new 1 MiB buffer each. A small
// request is copied into a free slot of memory shared with the main thread and posted as a
// number (its slot and length); the main thread frees the slot once the request is done.
// Ends when the read fails with ENODEV: the filesystem was unmounted.

import fs from 'node:fs'
import { parentPort, receiveMessageOnPort, workerData } from 'node:worker_threads'
import { ERRNO } from '../errno'
import { errorReply, InHeader, REQUEST_BUFFER } from './protocol'

export interface WorkerData {
  fd: number
  /** Opcodes the main thread serves. */
  served: number[]
  /** SLOTS slots of SLOT_SIZE bytes for small requests, and one Int32 per slot: 1 while its request is being served. */
  slots: SharedArrayBuffer
  busy: SharedArrayBuffer
}

/**
 * What a worker posts: a small request in a slot (slot * SLOT_KEY + its length), a large one
 * (its bytes transferred in `buf`), or why it stopped reading.
 */
export type WorkerMessage =
  | number
  | { type: 'request', buf: ArrayBuffer, length: number }
  | { type: 'end', error: string | null }

/**
 * Requests up to this size are copied out, and the big buffer takes the next one: a fresh
 * 1 MiB buffer for every 4 KiB write cost more (allocation, page faults, garbage collection of
 * external memory) than the copy. Larger ones are transferred and a new buffer allocated.
 */
export const SLOT_SIZE = 128 * 1024 + 4096
/** Slots per reader: about as many small requests as are served at once. */
export const SLOTS = 32
/** A slotted request's message is slot * SLOT_KEY + length. */
export const SLOT_KEY = 2 ** 18

function main (port: NonNullable<typeof parentPort>, { fd, served, slots, busy }: WorkerData): void {
  const known = new Set(served)
  const slotBytes = new Uint8Array(slots)
  const taken = new Int32Array(busy)
  let next = 0
  /** A free slot, marked busy, or -1 if all are in use. */
  const freeSlot = (): number => {
    for (let i = 0; i < SLOTS; i++) {
      const slot = (next + i) % SLOTS
      if (Atomics.compareExchange(taken, slot, 0, 1) === 0) {
        next = slot + 1
        return slot
      }
    }
    return -1
  }
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
    if (n <= SLOT_SIZE) {
      const slot = freeSlot()
      if (slot >= 0) {
        slotBytes.set(big.subarray(0, n), slot * SLOT_SIZE)
        port.postMessage(slot * SLOT_KEY + n satisfies WorkerMessage)
        continue
      }
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
