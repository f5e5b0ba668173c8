"""Benchmark of message search (peer/search.py): prints a table and writes bench/results/search.json.

    python bench/search.py [--messages 100000] [--quick]

The index lives in memory only (the store's bodies are sealed; see peer/search.py), so its cost
is paid at the first search after unlock. Measured in one run, side by side on the same store:

- scan: read and decrypt every stored message (the floor any search over sealed rows pays once);
- build: the same read plus tokenising into the inverted index (`SearchIndex.catch_up`);
- memory: Python heap held by the built index (tracemalloc, in a separate pass: it slows the build);
- query: index search against a linear scan of the decrypted texts, for a few queries.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from peer.localstore import LocalStore  # noqa: E402
from peer.search import SearchIndex, searchable_text, words  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "search.json"
QUERIES = ["meet", "report tomorrow", "zqx", "lunch fri", "w1"]


def _vocabulary(rng: random.Random, size: int) -> list[str]:
    letters = "abcdefghijklmnopqrstuvwxyz"
    common = ["meet", "tomorrow", "report", "lunch", "friday", "hello", "thanks", "call", "later", "see"]
    made = {"".join(rng.choice(letters) for _ in range(rng.randint(3, 9))) for _ in range(size)}
    return common + sorted(made)


async def fill(store: LocalStore, n: int, seed: int = 7) -> None:
    rng = random.Random(seed)
    vocab = _vocabulary(rng, 20_000)
    weights = [1 / (i + 1) for i in range(len(vocab))]  # Zipf-like, as real text is
    rows = []
    for i in range(n):
        body = " ".join(rng.choices(vocab, weights, k=rng.randint(4, 24)))
        message_id = os.urandom(16).hex()
        rows.append(
            (
                message_id,
                f"u:{2 + i % 40}",
                2 + i % 40,
                "dev",
                i % 2,
                "text",
                store._seal(message_id, {"type": "text", "body": f"{body} w{i % 1000}"}),
                1_700_000_000_000 + i * 1000,
                1_700_000_000_000 + i * 1000,
                "direct",
                "received",
                None,
            )
        )
    store.db.executemany(f"INSERT INTO messages ({store._COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)", rows)


async def scan(store: LocalStore) -> list[tuple[str, str]]:
    texts, rowid = [], 0
    while batch := await store.messages_after(rowid, 2_000):
        rowid = batch[-1][0]
        texts.extend((m.message_id, searchable_text(m)) for _, m in batch)
    return texts


def linear(texts: list[tuple[str, str]], query: str) -> list[str]:
    terms = words(query)
    found = []
    for message_id, text in texts:
        mine = words(text)
        if all(any(w.startswith(t) for w in mine) for t in terms):
            found.append(message_id)
    return found


async def run(n: int, repeat: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        store = LocalStore(Path(tmp) / "store.db", os.urandom(32))
        await store.open()
        try:
            t = time.perf_counter()
            await fill(store, n)
            fill_s = time.perf_counter() - t
            scans, builds = [], []
            for _ in range(repeat):  # alternate the two, so a noisy moment hits both
                t = time.perf_counter()
                texts = await scan(store)
                scans.append(time.perf_counter() - t)
                index = SearchIndex(store)
                t = time.perf_counter()
                await index.catch_up()
                builds.append(time.perf_counter() - t)
            assert index.size == n
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            measured = SearchIndex(store)
            await measured.catch_up()
            index_bytes = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            queries = []
            for q in QUERIES:
                t = time.perf_counter()
                hits = await index.search(q, limit=n)
                indexed_ms = (time.perf_counter() - t) * 1000
                t = time.perf_counter()
                expected = linear(texts, q)
                linear_ms = (time.perf_counter() - t) * 1000
                assert sorted(hits) == sorted(expected), q  # the index finds what a scan finds
                queries.append(
                    {"query": q, "hits": len(hits), "index_ms": indexed_ms, "linear_ms": linear_ms}
                )
        finally:
            await store.close()
    return {
        "messages": n,
        "fill_s": fill_s,
        "scan_s": statistics.median(scans),
        "build_s": statistics.median(builds),
        "build_over_scan": statistics.median(builds) / statistics.median(scans),
        "index_mib": index_bytes / 2**20,
        "queries": queries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="10,000 messages, one repeat")
    args = parser.parse_args()
    n, repeat = (10_000, 1) if args.quick else (args.messages, args.repeat)
    result = asyncio.run(run(n, repeat))
    print(f"search index, {result['messages']:,} messages (median of {repeat})")
    print(f"{'step':<34}{'value':>14}")
    print(f"{'scan: read + decrypt all':<34}{result['scan_s']:>12.2f} s")
    print(f"{'build: scan + index':<34}{result['build_s']:>12.2f} s")
    print(f"{'build / scan':<34}{result['build_over_scan']:>13.2f}x")
    print(f"{'index memory (tracemalloc)':<34}{result['index_mib']:>10.1f} MiB")
    print(f"{'query':<22}{'hits':>8}{'index ms':>12}{'linear ms':>12}")
    for q in result["queries"]:
        print(f"{q['query']:<22}{q['hits']:>8}{q['index_ms']:>12.2f}{q['linear_ms']:>12.1f}")
    load = os.getloadavg()[0]
    out = {
        "bench": "search",
        "python": platform.python_version(),
        "load_1m": load,
        "repeat": repeat,
        **result,
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(out, indent=2) + "\n")
    print(f"load {load:.1f}; wrote {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
