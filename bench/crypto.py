"""Benchmark of the crypto layer: prints a table and writes bench/results/crypto.json.

    python bench/crypto.py [--quick]

Measures, in one run on this machine: RSA-4096 + Ed25519 key generation; envelope seal and open for
1, 2 and 10 recipient devices (seal with fresh session keys and with a SessionKeyCache; open on a
cache miss — one RSA decryption — and on a hit); file-stream encrypt/decrypt throughput against
raw AES-256-GCM on the same buffer; LSB embed/extract on a 12-megapixel PNG. Targets (issue 3):
seal ≤ 0.5 ms and open ≤ 2 ms for 2 devices, file stream ≥ 0.8× raw AES-GCM, 12 MP embed < 2 s.

Pairwise sessions (issue 14; `--only ratchet` runs just these and merges them into the JSON):
prekey generation, PQXDH set-up on each side, ratchet seal and open per message on one chain and
ping-pong (a DH step on every message), the same through the store-backed SessionManager (one
SQLite transaction per message), and bytes per message beside envelope v2 for one device, all in
the same run. Goal: ratchet seal and open ≤ 0.1 ms per message.
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

from crypto import filestream, pairwise, stego  # noqa: E402
from crypto.envelope import LocalDevice, MemorySeenIds, Recipient, open_envelope, seal  # noqa: E402
from crypto.keys import generate_device_keys  # noqa: E402
from crypto.payload import Text, encode_payload  # noqa: E402
from crypto.prekeys import PrekeyBundle, PrekeyKind, generate_prekey, verify_prekey_bundle  # noqa: E402
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


def _stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {
        "median_ms": statistics.median(values) * 1000,
        "p95_ms": ordered[int(len(ordered) * 0.95)] * 1000,
    }


def bench_ratchet(messages: int) -> dict:
    alice_keys, bob_keys = fixed_device_keys(0), fixed_device_keys(1)
    a_dev, b_dev = "alice-laptop-0", "bob-phone-00001"
    gen = {
        "x25519_prekey": timed(lambda: generate_prekey(bob_keys, b_dev, PrekeyKind.ONE_TIME, 1), 200),
        "mlkem768_prekey": timed(lambda: generate_prekey(bob_keys, b_dev, PrekeyKind.KEM_ONE_TIME, 1), 200),
    }
    counter = iter(range(1, 10**9))

    def bundle() -> tuple[PrekeyBundle, dict]:
        pairs = [
            generate_prekey(bob_keys, b_dev, kind, next(counter))
            for kind in (PrekeyKind.SIGNED, PrekeyKind.KEM_ONE_TIME, PrekeyKind.ONE_TIME)
        ]
        raw = PrekeyBundle(2, b_dev, bob_keys.identity_public_bytes(), *(p.public for p in pairs))
        return raw, {(p.public.kind, p.public.key_id): p for p in pairs}

    def privates_of(table: dict):  # type: ignore[no-untyped-def]
        return lambda k, i: table.get((k, i))

    setups = [bundle() for _ in range(60)]
    verify_t, start_t, accept_t = [], [], []
    for raw, privates in setups:
        t = time.perf_counter()
        b = verify_prekey_bundle(raw, bob_keys.identity_public_bytes())
        verify_t.append(time.perf_counter() - t)
        t = time.perf_counter()
        sa = pairwise.start_session(alice_keys, 1, a_dev, b)
        start_t.append(time.perf_counter() - t)
        first = pairwise.seal(sa, b"x", os.urandom(16).hex())
        parsed = pairwise.peek(first)
        t = time.perf_counter()
        pairwise.accept_session(
            bob_keys, 2, b_dev, parsed, alice_keys.identity_public_bytes(), privates_of(privates)
        )
        accept_t.append(time.perf_counter() - t)

    # an established session, then one chain (consecutive messages one way)
    raw, privates = bundle()
    sa = pairwise.start_session(
        alice_keys, 1, a_dev, verify_prekey_bundle(raw, bob_keys.identity_public_bytes())
    )
    first = pairwise.seal(sa, b"hello", os.urandom(16).hex())
    sb = pairwise.accept_session(
        bob_keys,
        2,
        b_dev,
        pairwise.peek(first),
        alice_keys.identity_public_bytes(),
        lambda k, i: privates.get((k, i)),
    )
    pairwise.open_message(sb, pairwise.peek(first))
    pairwise.open_message(sa, pairwise.peek(pairwise.seal(sb, b"hi", os.urandom(16).hex())))
    body = encode_payload(Text("a typical chat message of a few dozen characters"))  # padded to 256
    seal_t, open_t = [], []
    for _ in range(messages // 200):  # chains of 200, opened in order after each is sealed
        ids = [os.urandom(16).hex() for _ in range(200)]
        sealed = []
        for mid in ids:
            t = time.perf_counter()
            sealed.append(pairwise.seal(sa, body, mid))
            seal_t.append(time.perf_counter() - t)
        for data in sealed:
            t = time.perf_counter()
            pairwise.open_message(sb, pairwise.peek(data))
            open_t.append(time.perf_counter() - t)
    # ping-pong: every message starts a new chain (a DH ratchet step on each side)
    pp_seal, pp_open = [], []
    for i in range(messages // 2):
        s_, r_ = (sa, sb) if i % 2 == 0 else (sb, sa)
        t = time.perf_counter()
        data = pairwise.seal(s_, body, os.urandom(16).hex())
        pp_seal.append(time.perf_counter() - t)
        t = time.perf_counter()
        pairwise.open_message(r_, pairwise.peek(data))
        pp_open.append(time.perf_counter() - t)
    state_bytes = len(sb.to_bytes())
    # beside it, envelope v2 for one device with a warm session-key cache (what 1:1 uses today)
    sender = LocalDevice(1, a_dev, alice_keys)
    me = LocalDevice(2, b_dev, bob_keys)
    rec = [Recipient(2, b_dev, bob_keys.encryption_public_der())]
    sessions, cache, seen = SessionKeyCache(max_messages=10 * messages), UnwrapCache(), MemorySeenIds()
    lookup = {(1, a_dev): alice_keys.identity_public_bytes()}.get
    text = Text("a typical chat message of a few dozen characters")
    env = [seal(text, sender, rec, "u:2", session_keys=sessions) for _ in range(messages)]
    open_envelope(env[0], me, lambda u, d: lookup((u, d)), seen, unwrap_cache=cache)
    it3 = iter(env[1:])
    env_open = timed(
        lambda: open_envelope(next(it3), me, lambda u, d: lookup((u, d)), seen, unwrap_cache=cache),
        messages - 1,
    )
    env_seal = timed(lambda: seal(text, sender, rec, "u:2", session_keys=sessions), messages)
    result = {
        "prekey_generation": {k: _stats(v) for k, v in gen.items()},
        "setup": {
            "verify_bundle": _stats(verify_t),
            "initiator_pqxdh": _stats(start_t),
            "responder_pqxdh": _stats(accept_t),
        },
        "same_chain": {"seal": _stats(seal_t), "open": _stats(open_t)},
        "ping_pong": {"seal": _stats(pp_seal), "open": _stats(pp_open)},
        "envelope_v2_one_device_warm": {"seal": _stats(env_seal), "open": _stats(env_open)},
        "bytes": {
            "padded_payload": len(body),
            "ratchet_message": len(sealed[0]),
            "ratchet_overhead": len(sealed[0]) - len(body),
            "prekey_message": len(first),
            "envelope_v2_one_device": len(env[0]),
            "session_state_record": state_bytes,
        },
    }
    result["store_backed"] = _bench_session_manager(min(messages, 300))
    return result


def _bench_session_manager(messages: int) -> dict:
    """seal + open through SessionManager on real SQLite stores (one transaction per message)."""
    import asyncio
    import shutil

    from tests.peer.sessionworld import Directory, SessionDevice

    async def run() -> dict:
        folder = Path(tempfile.mkdtemp(prefix="bench-ratchet-"))
        directory, pins = Directory(), {}
        a = SessionDevice(folder, 1, "alice-laptop-0", fixed_device_keys(0), directory, pins)
        b = SessionDevice(folder, 2, "bob-phone-00001", fixed_device_keys(1), directory, pins)
        try:
            for d in (a, b):
                pins[(d.user_id, d.device_id)] = d.keys.identity_public_bytes()
                await d.open()
                await directory.refresh(d)
            body = encode_payload(Text("a typical chat message of a few dozen characters"))
            out = await a.sessions.seal(2, b.device_id, body, os.urandom(16).hex())
            await b.sessions.open(out.data)
            seal_t, open_t = [], []
            for _ in range(messages):
                t = time.perf_counter()
                out = await a.sessions.seal(2, b.device_id, body, os.urandom(16).hex())
                seal_t.append(time.perf_counter() - t)
                t = time.perf_counter()
                await b.sessions.open(out.data)
                open_t.append(time.perf_counter() - t)
            return {"seal": _stats(seal_t), "open": _stats(open_t)}
        finally:
            await a.close()
            await b.close()
            shutil.rmtree(folder, ignore_errors=True)

    return asyncio.run(run())


def print_ratchet(r: dict) -> None:
    print("pairwise sessions (median / p95 ms)")
    for group in (
        "prekey_generation",
        "setup",
        "same_chain",
        "ping_pong",
        "envelope_v2_one_device_warm",
        "store_backed",
    ):
        cells = "  ".join(f"{k} {v['median_ms']:.3f}/{v['p95_ms']:.3f}" for k, v in r[group].items())
        print(f"  {group:<28} {cells}")
    b = r["bytes"]
    print(
        f"  bytes: ratchet message {b['ratchet_message']} (overhead {b['ratchet_overhead']} over a "
        f"{b['padded_payload']}-byte padded payload), prekey message {b['prekey_message']}, "
        f"envelope v2 for one device {b['envelope_v2_one_device']}, session state {b['session_state_record']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run)")
    parser.add_argument("--only", choices=["ratchet"], help="run one part and merge it into the JSON")
    args = parser.parse_args()
    q = args.quick
    if args.only == "ratchet":
        ratchet = bench_ratchet(400 if q else 2000)
        merged = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
        merged["ratchet"] = ratchet
        merged["ratchet_when"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        merged["ratchet_loadavg_at_start"] = os.getloadavg()
        RESULTS.write_text(json.dumps(merged, indent=2) + "\n")
        print_ratchet(ratchet)
        print(f"written {RESULTS.relative_to(ROOT)}")
        return
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
        "ratchet": bench_ratchet(400 if q else 2000),
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
    print_ratchet(result["ratchet"])
    print(f"{'budget':<40} {'measured':>10} {'budget':>8}  verdict")
    for row in result["budgets"]:
        verdict = "met" if row["met"] else "MISSED"
        print(f"{row['what']:<40} {row['measured']:>10.3f} {row['budget']:>8.2f}  {verdict}")
    print(f"written {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
