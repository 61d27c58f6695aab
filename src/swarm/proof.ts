// Knowing the topic must not be enough to join: each side of a connection proves it holds the
// cluster secret with a keyed hash over the connection's Noise handshake hash (unique per
// connection, equal on both sides: no replay) and its role in the handshake (no reflection).

import sodium from 'sodium-native'

const PROOF = Buffer.from('sheep/1 proof')
const TOPIC = Buffer.from('sheep/1 topic')
export const SECRET_BYTES = 32

function keyedHash (secret: Buffer, parts: Buffer[]): Buffer {
  const out = Buffer.alloc(32)
  sodium.crypto_generichash(out, Buffer.concat(parts), secret)
  return out
}

/** The Hyperswarm topic the cluster's nodes meet on. */
export function topicOf (secret: Buffer): Buffer {
  return keyedHash(secret, [TOPIC])
}

/** The proof one side sends; `initiator` is that side's role in the Noise handshake. */
export function proofFor (secret: Buffer, handshakeHash: Buffer, initiator: boolean): Buffer {
  return keyedHash(secret, [PROOF, Buffer.from([initiator ? 1 : 0]), handshakeHash])
}

/** Checks, in constant time, a proof sent by the side whose role was `senderInitiator`. */
export function proofIsValid (secret: Buffer, handshakeHash: Buffer, senderInitiator: boolean, proof: Uint8Array): boolean {
  if (proof.length !== 32) return false
  return sodium.sodium_memcmp(proofFor(secret, handshakeHash, senderInitiator), Buffer.from(proof.buffer, proof.byteOffset, proof.length))
}

export function newSecret (): Buffer {
  const secret = Buffer.alloc(SECRET_BYTES)
  sodium.randombytes_buf(secret)
  return secret
}
