"""A device's two private keys: Ed25519 identity (signs) and RSA-4096 encryption (unwraps).

Private keys live only in memory and in the encrypted keystore; this module never writes them
anywhere. Key generation is blocking (RSA-4096 takes ~0.4 s, sometimes seconds): callers run
`generate_device_keys` in a thread and pass `progress` to show a moving bar.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from .errors import CryptoError

RSA_KEY_BITS = 4096
RSA_PUBLIC_EXPONENT = 65537
IDENTITY_KEY_BYTES = 32

ProgressCallback = Callable[[float, str], None]


@dataclass(frozen=True, eq=False)
class DeviceKeys:
    """The identity and encryption private keys of one device."""

    identity: ed25519.Ed25519PrivateKey
    encryption: rsa.RSAPrivateKey
    _identity_public: bytes = field(init=False, repr=False)
    _encryption_public: bytes = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.identity, ed25519.Ed25519PrivateKey):
            raise CryptoError("identity key must be an Ed25519 private key")
        if not isinstance(self.encryption, rsa.RSAPrivateKey) or self.encryption.key_size != RSA_KEY_BITS:
            raise CryptoError(f"encryption key must be an RSA-{RSA_KEY_BITS} private key")
        ident = self.identity.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        enc = self.encryption.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        object.__setattr__(self, "_identity_public", ident)
        object.__setattr__(self, "_encryption_public", enc)

    def __repr__(self) -> str:  # never print key material
        return f"DeviceKeys(identity={self._identity_public.hex()[:16]}…)"

    def identity_public_bytes(self) -> bytes:
        """The Ed25519 public key, 32 raw bytes (what bundles and safety numbers carry)."""
        return self._identity_public

    def encryption_public_der(self) -> bytes:
        """The RSA public key as DER SubjectPublicKeyInfo (what bundles carry)."""
        return self._encryption_public

    def sign(self, message: bytes) -> bytes:
        return self.identity.sign(message)

    # --- private serialisation, for the keystore and test fixtures only ---------------------------

    def identity_private_raw(self) -> bytes:
        return self.identity.private_bytes(
            serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        )

    def encryption_private_der(self) -> bytes:
        return self.encryption.private_bytes(
            serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def to_pem(self) -> bytes:
        """Both private keys as unencrypted PKCS#8 PEM (test fixtures; never for real devices)."""
        pem = serialization.Encoding.PEM
        pkcs8 = serialization.PrivateFormat.PKCS8
        none = serialization.NoEncryption()
        return self.identity.private_bytes(pem, pkcs8, none) + self.encryption.private_bytes(pem, pkcs8, none)

    @classmethod
    def from_private_bytes(
        cls, identity_raw: bytes, encryption_der: bytes, *, validate: bool = True
    ) -> DeviceKeys:
        """`validate=False` skips the RSA consistency check (~0.2 s); only for bytes that were
        authenticated as our own (the keystore's AEAD), never for keys from elsewhere."""
        try:
            identity = ed25519.Ed25519PrivateKey.from_private_bytes(identity_raw)
            encryption = serialization.load_der_private_key(
                encryption_der, password=None, unsafe_skip_rsa_key_validation=not validate
            )
        except (ValueError, TypeError) as e:
            raise CryptoError("private key bytes are not a valid Ed25519 / RSA key pair") from e
        if not isinstance(encryption, rsa.RSAPrivateKey):
            raise CryptoError("encryption key is not an RSA key")
        return cls(identity=identity, encryption=encryption)

    @classmethod
    def from_pem(cls, data: bytes, *, validate: bool = True) -> DeviceKeys:
        """Inverse of `to_pem`: an Ed25519 and an RSA PKCS#8 block, in that order.

        `validate=False` skips the ~0.2 s RSA consistency check (committed test fixtures only)."""
        marker = b"-----END PRIVATE KEY-----"
        blocks = [b + marker for b in data.split(marker) if b.strip()]
        if len(blocks) != 2:
            raise CryptoError("expected two PEM private keys (Ed25519 then RSA)")
        try:
            identity = serialization.load_pem_private_key(blocks[0].strip(), password=None)
            encryption = serialization.load_pem_private_key(
                blocks[1].strip(), password=None, unsafe_skip_rsa_key_validation=not validate
            )
        except (ValueError, TypeError) as e:
            raise CryptoError("PEM private keys could not be parsed") from e
        if not isinstance(identity, ed25519.Ed25519PrivateKey) or not isinstance(
            encryption, rsa.RSAPrivateKey
        ):
            raise CryptoError("expected an Ed25519 key then an RSA key")
        return cls(identity=identity, encryption=encryption)


# Typical RSA-4096 generation time here; only shapes the progress estimate, never a deadline.
_EXPECTED_RSA_SECONDS = 0.6


def generate_device_keys(progress: ProgressCallback | None = None) -> DeviceKeys:
    """Make a fresh identity and encryption key pair (blocking; run it in a thread).

    RSA generation gives no progress of its own, so while it runs (the library releases the GIL) a
    helper thread reports an estimate that approaches but never reaches 1.0; 1.0 is reported only
    when the keys exist. `progress` is therefore called from two threads (never at the same time):
    an asyncio caller hands updates to its loop with `loop.call_soon_threadsafe`.
    """

    def report(fraction: float, label: str) -> None:
        if progress is not None:
            progress(fraction, label)

    report(0.0, "generating identity key (Ed25519)")
    identity = ed25519.Ed25519PrivateKey.generate()
    report(0.05, "generating encryption key (RSA-4096)")
    done = threading.Event()
    ticker: threading.Thread | None = None
    if progress is not None:
        started = time.monotonic()

        def tick() -> None:
            while not done.wait(0.1):
                elapsed = time.monotonic() - started
                # 0.05 → 0.95 along 1 - 1/(1+t/T): moves fast at first, slows but never stalls.
                estimate = 0.05 + 0.9 * (1 - 1 / (1 + elapsed / _EXPECTED_RSA_SECONDS))
                report(min(estimate, 0.95), "generating encryption key (RSA-4096)")

        ticker = threading.Thread(target=tick, name="keygen-progress", daemon=True)
        ticker.start()
    try:
        encryption = rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=RSA_KEY_BITS)
    finally:
        done.set()
        if ticker is not None:
            ticker.join()
    keys = DeviceKeys(identity=identity, encryption=encryption)
    report(1.0, "keys ready")
    return keys
