// The command's side of the control socket.

import net from 'node:net'
import { SheepError, type ErrorCode } from '../errors'
import type { Op, Reply, Requests } from './messages'

export async function call<K extends Op> (socketPath: string, op: K, args: Requests[K]['args'],
  onProgress?: (done: number, total: number) => void): Promise<Requests[K]['result']> {
  return await new Promise((resolve, reject) => {
    const socket = net.createConnection(socketPath)
    let buffered = ''
    let settled = false
    const settle = (fn: () => void): void => { if (!settled) { settled = true; fn() } }
    socket.setEncoding('utf8')
    socket.on('connect', () => socket.write(JSON.stringify({ op, args }) + '\n'))
    socket.on('error', (err: NodeJS.ErrnoException) => settle(() => {
      if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') reject(new SheepError('ENOENT', 'no sheep daemon is running for this mount'))
      else if (err.code === 'EACCES') reject(new SheepError('EACCES', `permission denied: ${socketPath} answers only root and the user the daemon runs as`))
      else reject(new SheepError('EIO', `cannot reach the sheep daemon: ${err.message}`))
    }))
    socket.on('data', (chunk: string) => {
      buffered += chunk
      let nl
      while ((nl = buffered.indexOf('\n')) >= 0) {
        const reply = JSON.parse(buffered.slice(0, nl)) as Reply
        buffered = buffered.slice(nl + 1)
        if (reply.type === 'progress') onProgress?.(reply.done, reply.total)
        else if (reply.ok) settle(() => resolve(reply.result as Requests[K]['result']))
        else settle(() => reject(new SheepError(reply.error.code as ErrorCode, reply.error.message)))
      }
    })
    socket.on('close', () => settle(() => reject(new SheepError('EIO', 'the sheep daemon closed the connection without an answer'))))
  })
}
