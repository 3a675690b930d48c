#!/usr/bin/env python3
"""The job runner's costs, measured through the `kiln` binary (standard library only).

1. Overhead of `kiln submit` for a trivial script against running the script directly,
   alternating, median milliseconds of ROUNDS each.
2. Metric ingestion: WRITERS runs submitted at once, each script appending ROWS metric
   records to $KILN_LOGS/metrics.jsonl; rows/s from the first submit to the last run recorded,
   and a check that every row arrived.

    python3 benches/runs.py --kiln target/release/kiln [--rounds 20] [--writers 4] [--rows 10000]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time


def write(path, text, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kiln", required=True)
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--rows", type=int, default=10000)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    kiln = os.path.abspath(args.kiln)
    work = tempfile.mkdtemp(prefix="kiln-bench-runs-")
    env = dict(os.environ, KILN_HOME=os.path.join(work, "home"))
    try:
        trivial = os.path.join(work, "trivial")
        write(os.path.join(trivial, "run.sh"), "#!/bin/sh\necho hello\n", 0o755)
        write(os.path.join(work, "trivial.toml"),
              'source_directory = "trivial"\nentry_script = "run.sh"\n')
        direct, submit = [], []
        for _ in range(args.rounds):
            t = time.perf_counter()
            subprocess.run([os.path.join(trivial, "run.sh")], check=True,
                           stdout=subprocess.DEVNULL)
            direct.append(time.perf_counter() - t)
            t = time.perf_counter()
            subprocess.run([kiln, "submit", os.path.join(work, "trivial.toml")], check=True,
                           stdout=subprocess.DEVNULL, env=env)
            submit.append(time.perf_counter() - t)

        writer = os.path.join(work, "writer")
        write(os.path.join(writer, "run.sh"),
              "#!/bin/bash\nseq 1 %d | awk '{printf \"{\\\"name\\\":\\\"m\\\",\\\"step\\\":%%d,"
              "\\\"value\\\":%%d}\\n\", $1, $1}' >> \"$KILN_LOGS/metrics.jsonl\"\n" % args.rows,
              0o755)
        write(os.path.join(work, "writer.toml"),
              'source_directory = "writer"\nentry_script = "run.sh"\n')
        t = time.perf_counter()
        procs = [subprocess.Popen([kiln, "submit", os.path.join(work, "writer.toml")],
                                  stdout=subprocess.PIPE, env=env, text=True)
                 for _ in range(args.writers)]
        ids = []
        for p in procs:
            out, _ = p.communicate()
            assert p.returncode == 0, out
            ids.append(out.split()[1].rstrip(":"))
        ingest_s = time.perf_counter() - t
        for run in ids:
            out = subprocess.run([kiln, "runs", "metrics", run, "--json"], env=env, check=True,
                                 stdout=subprocess.PIPE, text=True).stdout
            assert len(out.splitlines()) == args.rows, (run, len(out.splitlines()))

        result = {
            "direct_ms_median": 1000 * statistics.median(direct),
            "submit_ms_median": 1000 * statistics.median(submit),
            "submit_overhead_ms": 1000 * (statistics.median(submit) - statistics.median(direct)),
            "writers": args.writers,
            "rows_per_writer": args.rows,
            "ingest_wall_s": ingest_s,
            "rows_per_s": args.writers * args.rows / ingest_s,
        }
        if args.json:
            print(json.dumps(result))
        else:
            print(f"trivial script, median of {args.rounds}: direct {result['direct_ms_median']:.1f} ms,"
                  f" kiln submit {result['submit_ms_median']:.1f} ms"
                  f" (+{result['submit_overhead_ms']:.1f} ms)")
            print(f"{args.writers} concurrent runs x {args.rows} metrics: {ingest_s:.2f} s,"
                  f" {result['rows_per_s']:.0f} rows/s, no row lost")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
