"""PeerPost's end-to-end layer: keys, keystore, envelopes, file streams, safety numbers, stego.

Pure: bytes in, bytes out. It imports nothing else of PeerPost, opens no sockets and touches no
database; the only files it writes are the keystore (`crypto.keystore`) and what callers ask for.
Every refusal is a `crypto.errors.CryptoError`. Formats: docs/protocol.md; usage: docs/crypto.md.
"""
