"""Per-call overhead of the Python package: `m.score` called from Python against the same
Rust call (encode, batch, forward) timed inside Rust, in one process, plus the cost of the
one copy from a cached tensor to numpy.

    python python/bench.py [MODEL_DIR] [--iters N]

Prints medians over 5 rounds; compare the ratio, not the absolute times (the machine is noisy).
"""

import argparse
import json
import statistics
import time

import numpy as np

import reward_lens_rs as rl
from reward_lens_rs import _native

PROMPT = "How do I boil an egg?"
RESPONSE = "Place the egg in a pot of cold water, bring it to a boil, then simmer for nine minutes and cool it."


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", nargs="?", default=None, help="model directory (default: the embedded example model)")
    ap.add_argument("--iters", type=int, default=2000)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    m = rl.load(a.model)
    n_tokens = len(m.encode(PROMPT, RESPONSE)["ids"])
    m.score(PROMPT, RESPONSE)
    rust, py = [], []
    for _ in range(5):
        rust.append(_native._bench_score(m, PROMPT, RESPONSE, a.iters))
        start = time.perf_counter()
        for _ in range(a.iters):
            m.score(PROMPT, RESPONSE)
        py.append((time.perf_counter() - start) / a.iters)
    r, p = statistics.median(rust), statistics.median(py)
    # The one copy into numpy: first access of every cached site (kept afterwards).
    copies = []
    for _ in range(20):
        _, cache = m.run_with_cache(PROMPT, RESPONSE)
        start = time.perf_counter()
        arrays = [cache[k] for k in cache]
        copies.append(time.perf_counter() - start)
    nbytes = sum(x.nbytes for x in arrays)
    c = statistics.median(copies)
    out = {
        "model": str(m.path),
        "tokens": n_tokens,
        "rust_score_us": r * 1e6,
        "python_score_us": p * 1e6,
        "overhead_us": (p - r) * 1e6,
        "overhead_ratio": p / r,
        "cache_sites": len(arrays),
        "cache_bytes": nbytes,
        "to_numpy_us": c * 1e6,
        "to_numpy_gb_per_s": nbytes / c / 1e9,
    }
    if a.json:
        print(json.dumps(out, indent=2))
        return
    print(f"score of one {n_tokens}-token input ({m.path}):")
    print(f"  Rust call            {out['rust_score_us']:9.1f} µs")
    print(f"  m.score from Python  {out['python_score_us']:9.1f} µs  (overhead {out['overhead_us']:.1f} µs, ×{out['overhead_ratio']:.3f})")
    print(f"cache → numpy: {len(arrays)} sites, {nbytes / 1e6:.2f} MB in {c * 1e6:.0f} µs ({out['to_numpy_gb_per_s']:.2f} GB/s, one copy)")


if __name__ == "__main__":
    main()
