"""LSB steganography: committed image, round trips, capacity, lossy refusal, sealed payloads."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from crypto import stego
from crypto.envelope import MemorySeenIds, open_envelope, seal
from crypto.errors import CapacityExceeded, LossyImage, NoHiddenPayload, StegoError, WrongPassphrase
from crypto.payload import Text
from tests.crypto.conftest import DATA, few, pinned


def png(arr: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, fmt)
    return buf.getvalue()


def pixels(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_committed_image_reveals_its_payload_and_cover_reveals_none():
    assert stego.extract((DATA / "stego-hidden.png").read_bytes()) == b"PeerPost stego vector v1"
    with pytest.raises(NoHiddenPayload, match="no PeerPost payload"):
        stego.extract((DATA / "stego-cover.png").read_bytes())


@few
@given(
    w=st.integers(8, 40),
    h=st.integers(8, 40),
    alpha=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
    data=st.data(),
)
def test_any_payload_that_fits_round_trips_and_changes_only_low_bits(w, h, alpha, seed, data):
    rng = np.random.default_rng(seed)
    cover = rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8)
    cover_png = png(cover)
    cap = stego.capacity(cover_png)
    assert cap == w * h * 3 // 8 - stego.HEADER_BYTES
    payload = data.draw(st.binary(max_size=max(cap, 0)))
    out = stego.embed(cover_png, payload)
    assert stego.extract(out) == payload
    after = pixels(out)
    assert after.shape == cover.shape
    assert np.all((after ^ cover) <= 1)  # only least significant bits moved
    if alpha:
        assert np.array_equal(after[..., 3], cover[..., 3])  # alpha untouched


def test_capacity_error_names_the_capacity_and_the_need():
    cover = png(np.zeros((10, 10, 3), np.uint8))
    cap = stego.capacity(cover)
    with pytest.raises(CapacityExceeded, match=f"at most {cap} bytes.*needs {cap + 1}") as caught:
        stego.embed(cover, bytes(cap + 1))
    assert (caught.value.capacity, caught.value.needed) == (cap, cap + 1)


def test_jpeg_is_refused_with_an_explanation():
    jpeg = png(np.full((16, 16, 3), 128, np.uint8), fmt="JPEG")
    for call in (stego.capacity, lambda b: stego.embed(b, b"x"), stego.extract):
        with pytest.raises(LossyImage, match=r"lossily.*destroys the hidden bits"):
            call(jpeg)


def test_bmp_and_palette_images_are_accepted_and_output_png():
    bmp = png(np.full((16, 16, 3), 200, np.uint8), fmt="BMP")
    out = stego.embed(bmp, b"in a bmp")
    assert Image.open(io.BytesIO(out)).format == "PNG" and stego.extract(out) == b"in a bmp"
    pal = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 50, np.uint8)).convert("P").save(pal, "PNG")
    assert stego.extract(stego.embed(pal.getvalue(), b"pal")) == b"pal"


def test_not_an_image_is_a_clear_error():
    with pytest.raises(StegoError, match="not an image"):
        stego.capacity(b"definitely not a picture")


def test_truncated_png_is_a_clear_error():
    data = png(np.random.default_rng(5).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    with pytest.raises(StegoError, match=r"truncated or damaged|not an image"):
        stego.capacity(data[: len(data) // 2])


def test_passphrase_sealed_secret_is_ciphertext_in_the_image():
    cover = png(np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    out = stego.hide_with_passphrase(cover, b"meet at noon", "open sesame")
    hidden = stego.extract_hidden(out)
    assert hidden.kind == stego.KIND_PASSPHRASE and b"meet at noon" not in hidden.data
    assert stego.reveal_with_passphrase(out, "open sesame") == b"meet at noon"
    with pytest.raises(WrongPassphrase, match="passphrase does not open"):
        stego.reveal_with_passphrase(out, "open sesame!")


def test_envelope_hidden_in_an_image_opens_for_its_recipient(devices):
    cover = png(np.random.default_rng(4).integers(0, 256, (80, 80, 3), dtype=np.uint8))
    sealed = seal(Text("only for bob"), devices[0].local, [devices[1].recipient], "u:2")
    out = stego.hide_envelope(cover, sealed)
    hidden = stego.extract_hidden(out)
    assert hidden.kind == stego.KIND_ENVELOPE
    opened = open_envelope(hidden.data, devices[1].local, pinned(devices), MemorySeenIds())
    assert opened.payload == Text("only for bob")


@pytest.mark.slow
def test_a_megabyte_round_trips_through_a_twelve_megapixel_png():
    """The embed time budget (12 MP < 2 s of CPU) is reported by bench/crypto.py, not asserted here."""
    rng = np.random.default_rng(12)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)).save(buf, "PNG", compress_level=1)
    cover = buf.getvalue()
    payload = rng.bytes(1_000_000)
    out = stego.embed(cover, payload)
    assert stego.extract(out) == payload


def test_passphrase_capacity_counts_the_secret_not_the_sealed_form():
    cover = png(np.zeros((20, 20, 3), np.uint8))
    room = stego.passphrase_capacity(cover)
    assert room == stego.capacity(cover) - stego.PASSPHRASE_OVERHEAD
    out = stego.hide_with_passphrase(cover, bytes(room), "pw")
    assert stego.reveal_with_passphrase(out, "pw") == bytes(room)
    with pytest.raises(CapacityExceeded) as caught:
        stego.hide_with_passphrase(cover, bytes(room + 1), "pw")
    assert (caught.value.capacity, caught.value.needed) == (room, room + 1)
