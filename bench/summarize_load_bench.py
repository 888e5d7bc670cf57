#!/usr/bin/env python3
"""Medians of bench/run_load_bench.sh's JSON lines, as a table of ratios."""
import json
import statistics
import sys
from collections import defaultdict


def main():
    runs = defaultdict(list)
    for line in open(sys.argv[1]):
        r = json.loads(line)
        key = r["who"] if r["who"] != "weft" else f"weft tp={r['tp']} rank={r['rank']}"
        runs[key].append(r)
    limit = statistics.median(r["gb_per_s"] for r in runs["seqread"])
    fresh = statistics.median(r["gb_per_s"] for r in runs["seqread-fresh"])
    total = runs["seqread"][0]["bytes"]
    populate = ""
    if runs.get("populate-only"):
        populate = (f", backing fresh memory alone (no read, all cores) "
                    f"{statistics.median(r['gb_per_s'] for r in runs['populate-only']):.2f} GB/s")
    print(f"checkpoint: {total / 1e9:.3f} GB; sequential-read limit {limit:.2f} GB/s, into fresh "
          f"memory {fresh:.2f} GB/s{populate} (medians of {len(runs['seqread'])})")
    print(f"{'loader':28} {'bytes read':>12} {'seconds':>8} {'GB/s':>7} {'x limit':>8} "
          f"{'x fresh':>8} {'peak RSS':>9} {'RSS bound':>9}")
    for key, rs in runs.items():
        secs = statistics.median(r["seconds"] for r in rs)
        nbytes = rs[0].get("bytes_read", rs[0].get("bytes"))
        gbs = nbytes / secs / 1e9
        rss = max(r.get("peak_rss_bytes", 0) for r in rs)
        bound = ""
        if key.startswith("weft"):
            share = rs[0]["bytes_loaded"]
            limit_rss = 1.1 * share + 100e6
            bound = f"{'ok' if rss <= limit_rss else 'OVER'} {limit_rss / 1e9:.2f}G"
        print(f"{key:28} {nbytes / 1e9:11.3f}G {secs:8.3f} {gbs:7.2f} {gbs / limit:8.2f} "
              f"{gbs / fresh:8.2f} {rss / 1e9:8.2f}G {bound:>9}")


if __name__ == "__main__":
    main()
