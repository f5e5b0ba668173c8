"""One exception tree for everything `crypto` refuses.

Every failure the package can report is a `CryptoError` subclass whose message is a sentence a person
can act on. Callers catch narrow (`SignatureInvalid`, `KeystoreLocked`) and turn the error into UI
words at the edge; nothing here ever logs or includes secret material in a message.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Root of every error raised by `crypto`."""


class BundleInvalid(CryptoError):
    """A published device bundle is malformed or its self-signature does not verify."""


# --- keystore -------------------------------------------------------------------------------------


class KeystoreError(CryptoError):
    """The on-device keystore file cannot be used."""


class KeystoreLocked(KeystoreError):
    """The password does not open the keystore (the file itself is intact)."""


class KeystoreCorrupt(KeystoreError):
    """The keystore file is truncated, edited or not a keystore at all; nothing was loaded."""


class AtRestError(CryptoError):
    """A blob sealed with `crypto.atrest` is damaged, or the key or context is wrong."""


# --- envelopes ------------------------------------------------------------------------------------


class EnvelopeError(CryptoError):
    """An envelope cannot be built or cannot be accepted."""


class UnknownVersion(EnvelopeError):
    """The envelope announces a format version this build does not speak."""


class MalformedEnvelope(EnvelopeError):
    """The bytes are not a well-formed, canonical envelope."""


class EnvelopeTooLarge(EnvelopeError):
    """A payload, recipient list or envelope is past the protocol's size limits."""


class UnknownSenderDevice(EnvelopeError):
    """No pinned identity key for the sending device: the message cannot be verified."""


class SignatureInvalid(EnvelopeError):
    """An Ed25519 signature does not verify against the pinned identity key."""


class NoKeyForDevice(EnvelopeError):
    """The envelope carries no wrapped content key for this device."""


class DecryptionFailed(EnvelopeError):
    """The content key could not be unwrapped or the ciphertext did not authenticate."""


class ReplayDetected(EnvelopeError):
    """This sender device already delivered a message with this id."""


class ClockSkew(EnvelopeError):
    """The signed sent-at time is outside the accepted window."""


# --- file streams ---------------------------------------------------------------------------------


class FileStreamError(CryptoError):
    """A chunked file stream or its manifest is not acceptable."""


class ChunkTampered(FileStreamError):
    """A chunk failed authentication (flipped, truncated or from another file)."""

    def __init__(self, index: int, message: str | None = None) -> None:
        self.index = index
        super().__init__(message or f"file chunk {index} failed authentication: it was altered or damaged")


class ChunkOutOfOrder(FileStreamError):
    """A chunk arrived at the wrong position (reordered, duplicated, dropped or extra)."""

    def __init__(self, index: int, got: int | None = None, message: str | None = None) -> None:
        self.index = index
        self.got = got
        if message is None:
            message = f"file chunk {index} expected" + (f", got chunk {got}" if got is not None else "")
        super().__init__(message)


class StreamTruncated(FileStreamError):
    """The stream ended before its last chunk."""

    def __init__(self, received: int, expected: int) -> None:
        self.received = received
        self.expected = expected
        super().__init__(
            f"file stream ended after chunk {received - 1} of {expected} "
            f"(chunks {received}..{expected - 1} missing)"
        )


# --- steganography --------------------------------------------------------------------------------


class StegoError(CryptoError):
    """An image cannot carry, or does not carry, a hidden payload."""


class CapacityExceeded(StegoError):
    """The payload needs more bytes than the image can hide."""

    def __init__(self, capacity: int, needed: int) -> None:
        self.capacity = capacity
        self.needed = needed
        super().__init__(
            f"the image can hide at most {capacity} bytes, but this payload needs {needed}; "
            "use a larger image or a shorter payload"
        )


class LossyImage(StegoError):
    """The image format would destroy low-order bits (JPEG and other lossy formats)."""


class NoHiddenPayload(StegoError):
    """The image carries no PeerPost payload (or it was destroyed by re-encoding)."""


class WrongPassphrase(StegoError):
    """The hidden payload does not open with this passphrase (or the image was altered)."""


# --- prekeys and pairwise sessions (PQXDH + double ratchet) ---------------------------------------


class PrekeyInvalid(BundleInvalid):
    """A published prekey is malformed or its signature by the device's identity key does not verify."""


class SessionError(EnvelopeError):
    """A pairwise (double ratchet) message cannot be built or opened."""


class MalformedSessionMessage(SessionError):
    """The bytes are not a well-formed pairwise message (PPR) or heal request."""


class IdentityMismatch(SessionError):
    """A session message names an identity key other than the one pinned for its sender device."""


class NoSession(SessionError):
    """No session (or no prekey) to open this message with: state lost or restored from an old copy.

    Healable: tell the sender (`crypto.pairwise.make_heal_request`) so it starts a new session."""


class StaleMessage(SessionError):
    """This message's key was already used or discarded (a duplicate, or past the skipped-key bound).

    A duplicate is normal (a message that came both directly and through the mailbox); one whose id
    was never seen means the sender's state went back in time, and is healed like `NoSession`."""


class TooManySkipped(SessionError):
    """The message is further ahead of its chain than the skipped-key bound allows."""


class SessionDecryptionFailed(SessionError):
    """The message does not authenticate under the session (altered, or the states diverged)."""


# --- groups: signed membership chains and sender keys ----------------------------------------------


class GroupError(CryptoError):
    """A group's membership record, chain or message cannot be accepted."""


class MalformedGroupRecord(GroupError):
    """The bytes are not a well-formed, canonical membership record."""


class GroupRecordSignatureInvalid(GroupError):
    """A membership record's signature does not verify against its signer's pinned device key."""


class UnauthorizedGroupChange(GroupError):
    """A record makes a change its signer may not make (not an admin, not a member, unknown device)."""


class GroupChainBroken(GroupError):
    """A record does not follow the one before it (wrong group, sequence number or previous hash)."""


class GroupRollback(GroupError):
    """The chain served is older than, or forks from, the state this device already verified."""


class GhostMember(GroupError):
    """The server lists a member that no admin added in the verified chain."""

    def __init__(self, group_id: str, user_ids: list[int]) -> None:
        self.group_id = group_id
        self.user_ids = user_ids
        names = ", ".join(str(u) for u in user_ids)
        super().__init__(
            f"the server lists user(s) {names} in group {group_id}, but no admin added them: "
            "nothing is sent to or accepted from them"
        )


class SenderKeyError(GroupError):
    """A sender key, its distribution message or a group message cannot be used."""


class MalformedGroupMessage(SenderKeyError):
    """The bytes are not a well-formed group message or sender-key distribution."""


class UnknownSenderKey(SenderKeyError):
    """No sender key of this sender device and key id has been received (ask for a distribution)."""


class GroupMessageInvalid(SenderKeyError):
    """A group message's signature or ciphertext does not verify: it was forged or altered."""


class GroupMessageReplayed(SenderKeyError):
    """This sender key already opened a message at this position (a duplicate or a replay)."""


class GroupMessageTooFarAhead(SenderKeyError):
    """The message skips more positions of the chain than the window allows."""
