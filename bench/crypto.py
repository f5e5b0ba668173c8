"""Benchmark of the crypto layer: prints a table and writes bench/results/crypto.json.

    python bench/crypto.py [--quick]

Measures, in one run on this machine: RSA-4096 + Ed25519 key generation; envelope seal and open for
1, 2 and 10 recipient devices (seal with fresh session keys and with a SessionKeyCache; open on a
cache miss — one RSA decryption — and on a hit); file-stream encrypt/decrypt throughput against
raw AES-256-GCM on the same buffer; LSB embed/extract on a 12-megapixel PNG. Targets (issue 3):
seal ≤ 0.5 ms and open ≤ 2 ms for 2 devices, file stream ≥ 0.8× raw AES-GCM, 12 MP embed < 2 s.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import cryptography  # noqa: E402
import numpy as np  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from PIL import Image  # noqa: E402

from crypto import filestream, stego  # noqa: E402
from crypto.envelope import LocalDevice, MemorySeenIds, Recipient, open_envelope, seal  # noqa: E402
from crypto.keys import generate_device_keys  # noqa: E402
from crypto.payload import Text  # noqa: E402
from crypto.sessionkeys import SessionKeyCache, UnwrapCache  # noqa: E402
from tests.support.keys import FIXED_DEVICE_COUNT, fixed_device_keys  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "crypto.json"

# The crypto layer's budgets (issue 3; moved out of the unit tests by issue 12, where a loaded box
# made them fail at random). Checked here against the median of a quiet-enough run and reported.
BUDGETS_MS = {
    "seal_ms_median": 0.5,
    "seal_session_ms_median": 0.5,
    "open_ms_median": 2.0,
    "open_hit_ms_median": 0.5,
}
STEGO_EMBED_CPU_BUDGET_S = 2.0


def budget_rows(result: dict) -> list[tuple[str, float, float]]:
    """(what, measured, budget) for every budget: envelopes for 2 devices, the 12 MP embed in CPU s."""
    two = next(r for r in result["envelopes"] if r["recipients"] == 2)
    rows = [(f"2 devices {key}", two[key], limit) for key, limit in BUDGETS_MS.items()]
    rows.append(("stego 12 MP embed CPU s", result["stego"]["embed_cpu_s_best"], STEGO_EMBED_CPU_BUDGET_S))
    rows.append(("filestream encrypt / raw (x, floor)", result["filestream"]["encrypt_vs_raw"], 0.8))
    return rows


def budget_met(what: str, measured: float, limit: float) -> bool:
    return measured >= limit if "floor" in what else measured <= limit


def timed(fn, repeat: int) -> list[float]:
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def bench_keygen(runs: int) -> dict:
    times = timed(generate_device_keys, runs)
    return {"runs": runs, "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}


def _envelope_row(n: int, messages: int) -> dict:
    keys = [fixed_device_keys(i) for i in range(FIXED_DEVICE_COUNT)]
    sender = LocalDevice(1, "bench-sender-0", keys[0])
    pinned = {(1, "bench-sender-0"): keys[0].identity_public_bytes()}
    # Device i reuses one of the committed RSA keys: the cost per device is the same.
    recipients = [
        Recipient(2, f"bench-device-{i:03d}", keys[1 + i % (FIXED_DEVICE_COUNT - 1)].encryption_public_der())
        for i in range(n)
    ]
    me = LocalDevice(2, "bench-device-000", keys[1])
    text = Text("a typical chat message of a few dozen characters")
    lookup = lambda u, d: pinned.get((u, d))  # noqa: E731
    # No caches: fresh session keys per envelope (one RSA encryption per device, one decryption).
    seal_times = timed(lambda: seal(text, sender, recipients, "u:2"), messages)
    sealed = [seal(text, sender, recipients, "u:2") for _ in range(messages // 2)]
    it = iter(sealed)
    seen = MemorySeenIds()
    open_times = timed(lambda: open_envelope(next(it), me, lookup, seen), len(sealed))
    # A session (what a running peer does): the sender's cache warm, the receiver's cache warm.
    sessions, cache = SessionKeyCache(max_messages=10 * messages), UnwrapCache()
    seal(text, sender, recipients, "u:2", session_keys=sessions)
    session_seal_times = timed(lambda: seal(text, sender, recipients, "u:2", session_keys=sessions), messages)
    in_session = [seal(text, sender, recipients, "u:2", session_keys=sessions) for _ in range(messages)]
    open_envelope(in_session[0], me, lookup, MemorySeenIds(), unwrap_cache=cache)
    it = iter(in_session[1:])
    hit_times = timed(
        lambda: open_envelope(next(it), me, lookup, seen, unwrap_cache=cache), len(in_session) - 1
    )
    assert cache.misses == 1, "every open after the first should have been a cache hit"

    def ms(values: list[float], q: float) -> float:
        return sorted(values)[int(len(values) * q)] * 1000 if q < 1 else statistics.median(values) * 1000

    return {
        "recipients": n,
        "seal_ms_median": statistics.median(seal_times) * 1000,
        "seal_ms_p95": ms(seal_times, 0.95),
        "seal_session_ms_median": statistics.median(session_seal_times) * 1000,
        "seal_session_ms_p95": ms(session_seal_times, 0.95),
        "open_ms_median": statistics.median(open_times) * 1000,
        "open_ms_p95": ms(open_times, 0.95),
        "open_hit_ms_median": statistics.median(hit_times) * 1000,
        "open_hit_ms_p95": ms(hit_times, 0.95),
        "envelope_bytes": len(sealed[0]),
    }


def bench_envelopes(messages: int) -> list[dict]:
    return [_envelope_row(n, messages) for n in (1, 2, 10)]


def bench_filestream(size_mib: int, rounds: int) -> dict:
    """Stream vs raw AES-256-GCM over the same buffer, both in 64 KiB pieces with output dropped
    as it is produced (what a sender or receiver does); one whole-buffer call for reference."""
    buf = os.urandom(size_mib << 20)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.bin"
        path.write_bytes(buf)
        manifest = filestream.prepare_file(path)
        aead = AESGCM(manifest.key)
        nonce = os.urandom(12)
        chunk = manifest.chunk_size
        view = memoryview(buf)
        raw_chunks = [aead.encrypt(nonce, view[i : i + chunk], None) for i in range(0, len(buf), chunk)]
        encrypted = list(filestream.encrypt_chunks(manifest, path))

        def raw_whole() -> None:
            aead.encrypt(nonce, buf, None)

        def raw_encrypt() -> None:
            for i in range(0, len(buf), chunk):
                aead.encrypt(nonce, view[i : i + chunk], None)

        def raw_decrypt() -> None:
            for c in raw_chunks:
                aead.decrypt(nonce, c, None)

        def stream_encrypt() -> None:
            for _ in filestream.encrypt_chunks(manifest, path):
                pass

        def stream_decrypt() -> None:
            for _ in filestream.decrypt_chunks(manifest, encrypted, verify_sha256=False):
                pass

        def stream_decrypt_sha() -> None:
            for _ in filestream.decrypt_chunks(manifest, encrypted):
                pass

        mb = len(buf) / 1e6
        best = {
            name: mb / min(timed(fn, rounds))
            for name, fn in (
                ("raw_aes_gcm_one_call", raw_whole),
                ("raw_aes_gcm_encrypt_64k", raw_encrypt),
                ("raw_aes_gcm_decrypt_64k", raw_decrypt),
                ("stream_encrypt_from_file", stream_encrypt),
                ("stream_decrypt", stream_decrypt),
                ("stream_decrypt_plus_sha256", stream_decrypt_sha),
            )
        }
    return {
        "buffer_mib": size_mib,
        "chunk_size": chunk,
        "mb_per_s": best,
        "encrypt_vs_raw": best["stream_encrypt_from_file"] / best["raw_aes_gcm_encrypt_64k"],
        "decrypt_vs_raw": best["stream_decrypt"] / best["raw_aes_gcm_decrypt_64k"],
        "decrypt_with_sha256_vs_raw": best["stream_decrypt_plus_sha256"] / best["raw_aes_gcm_decrypt_64k"],
    }


def bench_stego(rounds: int) -> dict:
    rng = np.random.default_rng(12)
    cover_arr = rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(cover_arr).save(out, "PNG", compress_level=1)
    cover = out.getvalue()
    payload = rng.bytes(1_000_000)
    wall, cpu = [], []
    for _ in range(rounds):
        t, c = time.perf_counter(), time.process_time()
        hidden = stego.embed(cover, payload)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    t = time.perf_counter()
    assert stego.extract(hidden) == payload
    extract_s = time.perf_counter() - t
    return {
        "megapixels": 12.0,
        "payload_bytes": len(payload),
        "capacity_bytes": stego.capacity(cover),
        "embed_s_best": min(wall),
        "embed_cpu_s_best": min(cpu),
        "extract_s": extract_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    args = parser.parse_args()
    q = args.quick
    result = {
        "machine": {
            "python": platform.python_version(),
            "cryptography": cryptography.__version__,
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "keygen": bench_keygen(2 if q else 7),
        "envelopes": bench_envelopes(100 if q else 600),
        "filestream": bench_filestream(16 if q else 64, 2 if q else 3),
        "stego": bench_stego(1 if q else 3),
    }
    result["budgets"] = [
        {"what": w, "measured": m, "budget": b, "met": budget_met(w, m, b)} for w, m, b in budget_rows(result)
    ]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")

    k = result["keygen"]
    print(
        f"keygen (Ed25519 + RSA-4096)   median {k['median_s']:.2f} s  "
        f"(min {k['min_s']:.2f}, max {k['max_s']:.2f})"
    )
    print("envelopes (median / p95 ms): seal fresh = new session keys; seal session = cached;")
    print("open miss = one RSA decryption; open hit = session key cached")
    heads = ("seal fresh", "seal session", "open miss", "open hit")
    print(f"{'devices':>8} " + " ".join(f"{h:>14}" for h in heads) + f" {'bytes':>7}")
    for r in result["envelopes"]:
        cells = [
            f"{r[k + '_ms_median']:.3f}/{r[k + '_ms_p95']:.3f}"
            for k in ("seal", "seal_session", "open", "open_hit")
        ]
        print(f"{r['recipients']:>8} " + " ".join(f"{c:>14}" for c in cells) + f" {r['envelope_bytes']:>7}")
    f = result["filestream"]
    for name, v in f["mb_per_s"].items():
        print(f"{name:<30} {v:8.0f} MB/s")
    print(
        f"stream/raw: encrypt {f['encrypt_vs_raw']:.2f}x, decrypt {f['decrypt_vs_raw']:.2f}x, "
        f"decrypt+sha256 {f['decrypt_with_sha256_vs_raw']:.2f}x"
    )
    s = result["stego"]
    print(
        f"stego 12 MP embed {s['embed_s_best']:.2f} s (CPU {s['embed_cpu_s_best']:.2f} s), "
        f"extract {s['extract_s']:.2f} s, capacity {s['capacity_bytes']} B"
    )
    print(f"{'budget':<40} {'measured':>10} {'budget':>8}  verdict")
    for row in result["budgets"]:
        verdict = "met" if row["met"] else "MISSED"
        print(f"{row['what']:<40} {row['measured']:>10.3f} {row['budget']:>8.2f}  {verdict}")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
