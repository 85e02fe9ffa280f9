"""p50 and p99 of commit → accepted from a running streamer's /metrics.

Reads the `walcast_delivery_latency_seconds` histogram at http://127.0.0.1:PORT/metrics
and prints `count<TAB>p50 ms<TAB>p99 ms`, interpolated within the buckets.

    python3 bench/histogram.py PORT
"""
import sys
import urllib.request

m = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics").read().decode()
buckets, count = [], 0
for line in m.splitlines():
    if line.startswith("walcast_delivery_latency_seconds_bucket"):
        le = line.split('le="')[1].split('"')[0]
        buckets.append((float("inf") if le == "+Inf" else float(le), int(line.split()[-1])))
    elif line.startswith("walcast_delivery_latency_seconds_count"):
        count = int(line.split()[-1])


def quantile(p):
    target, prev_le, prev_n = p * count, 0.0, 0
    for le, n in buckets:
        if n >= target:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((target - prev_n) / max(n - prev_n, 1))
        prev_le, prev_n = le, n
    return float("nan")


print(f"{count}\t{quantile(0.5) * 1000:.1f}\t{quantile(0.99) * 1000:.1f}")
