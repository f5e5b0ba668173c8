"""Hide a payload in the least significant bits of a lossless image, and get it back.

Layout: the low bit of every R, G and B sample (alpha is left alone), row-major, most significant
bit of each byte first, carries `"PPst" || version u8 || kind u8 || length u32 || payload`. The
output is always PNG. JPEG and other lossy formats are refused: their re-compression rewrites the
low bits, so a hidden payload would not survive, and embedding in a decoded JPEG leaves tell-tale
statistics. `hide_with_passphrase` (the default for users) seals the secret first, so the hidden
bits are ciphertext; an envelope from `crypto.envelope.seal` can be hidden with `kind=ENVELOPE`.

What this is not: undetectable. Sequential LSB embedding is visible to statistical steganalysis;
the sealing keeps the content secret, not the fact that something is hidden.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from PIL import Image, UnidentifiedImageError

from .errors import CapacityExceeded, LossyImage, NoHiddenPayload, StegoError, WrongPassphrase

MAGIC = b"PPst"
STEGO_VERSION = 1
KIND_RAW = 0
KIND_PASSPHRASE = 1
KIND_ENVELOPE = 2
_HEADER = struct.Struct(">4sBBI")
HEADER_BYTES = _HEADER.size
LOSSLESS_FORMATS = frozenset({"PNG", "BMP", "TIFF"})
MAX_PIXELS = 80_000_000  # below Pillow's decompression-bomb guard (~89 MP); 12-50 MP photos fit
_SEAL_DOMAIN = b"peerpost/stego/passphrase/v1\x00"
_SCRYPT_LOG2_N = 15
_SALT_BYTES = 16
_NONCE_BYTES = 12
PASSPHRASE_OVERHEAD = 1 + _SALT_BYTES + _NONCE_BYTES + 16  # log2 n, salt, nonce, GCM tag


@dataclass(frozen=True)
class HiddenPayload:
    kind: int
    data: bytes


def _load(image_bytes: bytes) -> tuple[np.ndarray, bool]:
    """Decode to an (H, W, 3 or 4) uint8 array; refuses lossy or unsuitable images with reasons."""
    try:
        img: Image.Image = Image.open(io.BytesIO(image_bytes))
        fmt = img.format
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as e:
        raise StegoError("not an image Pillow can read (use PNG or BMP)") from e
    if fmt in {"JPEG", "MPO", "JPEG2000", "WEBP", "HEIF", "AVIF"}:
        raise LossyImage(
            f"{fmt} images are stored lossily: saving or sending them re-compresses the pixels and "
            "destroys the hidden bits. Use a PNG or BMP (converting a JPEG to PNG works, "
            "but the result must then stay PNG)"
        )
    if fmt not in LOSSLESS_FORMATS:
        raise StegoError(f"{fmt or 'this'} images are not supported: use PNG or BMP")
    if fmt == "TIFF" and str(img.info.get("compression", "raw")).startswith("jpeg"):
        raise LossyImage("this TIFF is JPEG-compressed, which destroys hidden bits; use PNG or BMP")
    if img.width * img.height > MAX_PIXELS:
        raise StegoError(f"image has {img.width * img.height} pixels; the limit is {MAX_PIXELS}")
    if img.mode in {"RGB", "RGBA"}:
        pass
    elif img.mode in {"P", "L", "LA", "1"}:
        # Palette and grey images become true colour so a changed low bit moves a colour by one
        # step instead of jumping to another palette entry.
        img = img.convert("RGBA" if "A" in img.mode or "transparency" in img.info else "RGB")
    else:
        raise StegoError(f"image mode {img.mode} is not supported: use 8-bit RGB or RGBA")
    try:
        img.load()
    except (OSError, SyntaxError) as e:  # Pillow reports truncated or garbled image data this way
        raise StegoError(f"the {fmt} image is truncated or damaged: {e}") from e
    arr = np.asarray(img, dtype=np.uint8)
    return arr, arr.shape[2] == 4


def _capacity_of(arr: np.ndarray) -> int:
    return int(arr.shape[0] * arr.shape[1] * 3 // 8 - HEADER_BYTES)


def capacity(image_bytes: bytes) -> int:
    """How many payload bytes this image can hide (after the header)."""
    return max(0, _capacity_of(_load(image_bytes)[0]))


def embed(image_bytes: bytes, payload: bytes, kind: int = KIND_RAW) -> bytes:
    """Hide `payload` as is and return a PNG; callers normally hide ciphertext (see module doc)."""
    arr, has_alpha = _load(image_bytes)
    cap = _capacity_of(arr)
    if len(payload) > cap:
        raise CapacityExceeded(capacity=max(cap, 0), needed=len(payload))
    message = _HEADER.pack(MAGIC, STEGO_VERSION, kind, len(payload)) + payload
    bits = np.unpackbits(np.frombuffer(message, dtype=np.uint8))
    out = np.array(arr, dtype=np.uint8, copy=True)
    rgb = out[..., :3]
    n = bits.size
    # Only the first ceil(n/3) pixels change; work on that slice instead of all 36 M samples.
    flat_rows = -(-n // 3)
    pixels = rgb.reshape(-1, 3)[:flat_rows].reshape(-1)
    pixels[:n] = (pixels[:n] & 0xFE) | bits
    rgb.reshape(-1, 3)[:flat_rows] = pixels.reshape(-1, 3)
    buf = io.BytesIO()
    # Fast lossless settings: a 12 MP PNG encodes in ~0.8 s instead of ~3 s at the defaults, and
    # Huffman-only coding of filtered rows costs little size on photographs.
    Image.fromarray(out, "RGBA" if has_alpha else "RGB").save(
        buf, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY
    )
    return buf.getvalue()


def extract_hidden(image_bytes: bytes) -> HiddenPayload:
    """The hidden payload and its kind; `NoHiddenPayload` when the image carries none."""
    arr, _ = _load(image_bytes)
    samples = arr[..., :3].reshape(-1)
    if samples.size < HEADER_BYTES * 8:
        raise NoHiddenPayload("the image is too small to carry a hidden payload")
    header = np.packbits(samples[: HEADER_BYTES * 8] & 1).tobytes()
    magic, version, kind, length = _HEADER.unpack(header)
    if magic != MAGIC:
        raise NoHiddenPayload(
            "no PeerPost payload in this image (or it was re-encoded, resized or edited, "
            "which destroys the hidden bits)"
        )
    if version != STEGO_VERSION:
        raise NoHiddenPayload(
            f"hidden payload has format version {version}; this build reads {STEGO_VERSION}"
        )
    if length > _capacity_of(arr):
        raise NoHiddenPayload(f"hidden header claims {length} bytes, more than the image can hold")
    start = HEADER_BYTES * 8
    data = np.packbits(samples[start : start + length * 8] & 1).tobytes()
    return HiddenPayload(kind=kind, data=data)


def extract(image_bytes: bytes) -> bytes:
    return extract_hidden(image_bytes).data


def _passphrase_key(passphrase: str, salt: bytes, log2_n: int) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise StegoError("the passphrase must be a non-empty string")
    try:
        secret = passphrase.encode("utf-8")
    except UnicodeEncodeError as e:
        raise StegoError("the passphrase is not valid Unicode text") from e
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=8, p=1).derive(secret)


def seal_with_passphrase(secret: bytes, passphrase: str) -> bytes:
    """`log2(n) u8 || salt[16] || nonce[12] || AES-256-GCM(secret)` under a scrypt-derived key."""
    salt = os.urandom(_SALT_BYTES)
    nonce = os.urandom(_NONCE_BYTES)
    key = _passphrase_key(passphrase, salt, _SCRYPT_LOG2_N)
    head = bytes([_SCRYPT_LOG2_N]) + salt + nonce
    return head + AESGCM(key).encrypt(nonce, secret, _SEAL_DOMAIN + head)


def open_with_passphrase(sealed: bytes, passphrase: str) -> bytes:
    head_len = 1 + _SALT_BYTES + _NONCE_BYTES
    if len(sealed) < head_len + 16 or not 10 <= sealed[0] <= 20:
        raise WrongPassphrase("the hidden payload is not a passphrase-sealed secret, or it is damaged")
    salt = sealed[1 : 1 + _SALT_BYTES]
    nonce = sealed[1 + _SALT_BYTES : head_len]
    key = _passphrase_key(passphrase, salt, sealed[0])
    try:
        return AESGCM(key).decrypt(nonce, sealed[head_len:], _SEAL_DOMAIN + sealed[:head_len])
    except InvalidTag as e:
        raise WrongPassphrase(
            "the passphrase does not open the hidden payload (or the image was altered)"
        ) from e


def passphrase_capacity(image_bytes: bytes) -> int:
    """How many secret bytes `hide_with_passphrase` can hide in this image."""
    return max(0, capacity(image_bytes) - PASSPHRASE_OVERHEAD)


def hide_with_passphrase(image_bytes: bytes, secret: bytes, passphrase: str) -> bytes:
    """Seal `secret` under `passphrase` and hide it; returns a PNG.

    A `CapacityExceeded` here counts the secret's bytes, not the sealed form's, so the numbers match
    what the person typed.
    """
    try:
        return embed(image_bytes, seal_with_passphrase(secret, passphrase), kind=KIND_PASSPHRASE)
    except CapacityExceeded as e:
        raise CapacityExceeded(capacity=max(0, e.capacity - PASSPHRASE_OVERHEAD), needed=len(secret)) from e


def reveal_with_passphrase(image_bytes: bytes, passphrase: str) -> bytes:
    hidden = extract_hidden(image_bytes)
    if hidden.kind != KIND_PASSPHRASE:
        raise StegoError(f"the hidden payload is not passphrase-sealed (kind {hidden.kind})")
    return open_with_passphrase(hidden.data, passphrase)


def hide_envelope(image_bytes: bytes, envelope: bytes) -> bytes:
    """Hide an envelope sealed to recipient devices (`crypto.envelope.seal`); returns a PNG."""
    return embed(image_bytes, envelope, kind=KIND_ENVELOPE)
