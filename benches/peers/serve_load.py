"""A bounded load test for an image scoring service: CLIENTS threads, each on one keep-alive
connection, POST encoded images to PATH for SECONDS and time every answer. Prints one JSON line:
requests, errors, images/s, p50 and p99 latency in milliseconds.

    serve_load.py --url http://127.0.0.1:8080 --path /predictions/NAME --images DIR
                  [--clients 16] [--seconds 30] [--key KEY] [--label NAME]

Used by benches/serve.sh against `kiln serve` and against benches/peers/onnx_serve.py.
"""

import argparse
import http.client
import json
import os
import statistics
import threading
import time
import urllib.parse


def images(folder, limit=1000):
    found = []
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            if name.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".webp")):
                with open(os.path.join(root, name), "rb") as f:
                    found.append(f.read())
                if len(found) == limit:
                    return found
    if not found:
        raise SystemExit(f"no images under {folder}")
    return found


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--url", required=True)
    p.add_argument("--path", required=True)
    p.add_argument("--images", required=True)
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--key")
    p.add_argument("--label", default="service")
    a = p.parse_args()
    bodies = images(a.images)
    url = urllib.parse.urlparse(a.url)
    headers = {"Content-Type": "application/octet-stream"}
    if a.key:
        headers["Authorization"] = "Bearer " + a.key
    latencies, errors, lock = [], [], threading.Lock()
    deadline = time.perf_counter() + a.seconds

    def client(i):
        conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        mine, bad, n = [], [], i
        while time.perf_counter() < deadline:
            body = bodies[n % len(bodies)]
            n += a.clients
            start = time.perf_counter()
            try:
                conn.request("POST", a.path, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                if response.status != 200:
                    bad.append(response.status)
                else:
                    mine.append(time.perf_counter() - start)
            except Exception as e:  # a dropped connection counts as an error
                bad.append(str(e))
                conn.close()
                conn = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
        with lock:
            latencies.extend(mine)
            errors.extend(bad)

    started = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    latencies.sort()
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    print(json.dumps({
        "engine": a.label,
        "clients": a.clients,
        "seconds": round(elapsed, 2),
        "requests": len(latencies) + len(errors),
        "errors": len(errors),
        "first_errors": [str(e) for e in errors[:3]],
        "images_per_s": round(len(latencies) / elapsed, 2),
        "p50_ms": round(q[49] * 1000, 2),
        "p99_ms": round(q[98] * 1000, 2),
    }))


if __name__ == "__main__":
    main()
