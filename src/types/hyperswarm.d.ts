// The parts of the Holepunch packages that src/swarm uses (they ship no types).

declare module 'hyperdht' {
  import type { EventEmitter } from 'node:events'
  namespace DHT {
    interface KeyPair { publicKey: Buffer, secretKey: Buffer }
    interface Address { host: string, port: number }
    interface Options {
      port?: number
      host?: string
      bootstrap?: Address[]
      ephemeral?: boolean
      firewalled?: boolean
      connectionKeepAlive?: number | false
      keyPair?: KeyPair
    }
  }
  class DHT extends EventEmitter {
    constructor (opts?: DHT.Options)
    static keyPair (seed?: Buffer): DHT.KeyPair
    static bootstrapper (port: number, host: string, opts?: DHT.Options): DHT
    ready (): Promise<void>
    fullyBootstrapped (): Promise<void>
    address (): DHT.Address
    destroy (): Promise<void>
  }
  export = DHT
}

declare module 'hyperswarm' {
  import type { EventEmitter } from 'node:events'
  import type DHT from 'hyperdht'
  import type { Duplex } from 'node:stream'
  namespace Hyperswarm {
    /** A Noise-encrypted, message-framed connection (@hyperswarm/secret-stream over UDX). */
    interface Connection extends Duplex {
      remotePublicKey: Buffer
      handshakeHash: Buffer
      isInitiator: boolean
      rawStream: { remoteHost?: string, remotePort?: number } | null
      setTimeout (ms: number): void
      setKeepAlive (ms: number): void
    }
    interface PeerInfo { publicKey: Buffer, ban (banned: boolean): void }
    interface Discovery { flushed (): Promise<void>, refresh (opts?: { client?: boolean, server?: boolean }): Promise<void>, destroy (): Promise<void> }
    interface Options {
      dht?: DHT
      keyPair?: DHT.KeyPair
      firewall?: (remotePublicKey: Buffer) => boolean
      maxPeers?: number
    }
  }
  class Hyperswarm extends EventEmitter {
    constructor (opts?: Hyperswarm.Options)
    keyPair: DHT.KeyPair
    connections: Set<Hyperswarm.Connection>
    join (topic: Buffer, opts?: { client?: boolean, server?: boolean }): Hyperswarm.Discovery
    joinPeer (publicKey: Buffer): void
    flush (): Promise<void>
    destroy (opts?: { force?: boolean }): Promise<void>
    on (event: 'connection', fn: (conn: Hyperswarm.Connection, info: Hyperswarm.PeerInfo) => void): this
  }
  export = Hyperswarm
}

declare module 'protomux' {
  import type { Duplex } from 'node:stream'
  import type c from 'compact-encoding'
  namespace Protomux {
    interface Message<T> { send (value: T): boolean }
    interface MessageOptions<T> { encoding: c.Encoding<T>, onmessage?: (value: T) => void | Promise<void> }
    interface Channel {
      open (handshake?: unknown): void
      close (): void
      cork (): void
      uncork (): void
      addMessage<T> (opts: MessageOptions<T>): Message<T>
      readonly opened: boolean
      readonly closed: boolean
    }
    interface ChannelOptions<H> {
      protocol: string
      id?: Buffer
      handshake?: c.Encoding<H>
      onopen?: (handshake: H) => void | Promise<void>
      onclose?: () => void | Promise<void>
    }
  }
  class Protomux {
    constructor (stream: Duplex)
    static from (stream: Duplex): Protomux
    createChannel<H> (opts: Protomux.ChannelOptions<H>): Protomux.Channel | null
  }
  export = Protomux
}

declare module 'sodium-native' {
  export const crypto_generichash_BYTES: number
  export function crypto_generichash (out: Buffer, input: Buffer, key?: Buffer): void
  export function sodium_memcmp (a: Buffer, b: Buffer): boolean
  export function randombytes_buf (buf: Buffer): void
  export const crypto_sign_BYTES: number
  export function crypto_sign_detached (signature: Buffer, message: Buffer, secretKey: Buffer): void
  export function crypto_sign_verify_detached (signature: Buffer, message: Buffer, publicKey: Buffer): boolean
}

declare module '@hyperswarm/testnet' {
  import type DHT from 'hyperdht'
  interface Testnet { bootstrap: DHT.Address[], nodes: DHT[], destroy (): Promise<void> }
  function createTestnet (size?: number, opts?: { host?: string, port?: number }): Promise<Testnet>
  export = createTestnet
}

declare module 'noise-handshake' {
  class Noise {
    constructor (pattern: 'XX', initiator: boolean, keyPair: { publicKey: Buffer, secretKey: Buffer }, opts: { curve: unknown })
    initialise (prologue: Uint8Array, remoteStatic?: Uint8Array): void
    send (payload?: Uint8Array): Uint8Array
    recv (message: Uint8Array): Uint8Array
    complete: boolean
    tx: Uint8Array | null
    rx: Uint8Array | null
    hash: Uint8Array | null
    rs: Uint8Array | null
  }
  export = Noise
}

declare module 'noise-curve-ed' {
  const curve: unknown
  export = curve
}
