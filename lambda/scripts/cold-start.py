#!/usr/bin/env python3
"""Measures a Lambda bootstrap's cold start on this machine: init (process start to
its first `GET /runtime/invocation/next`, what Lambda reports as Init Duration) and
the first invocation (the event handed over to the response posted), over N fresh
processes, against a Runtime API served here on 127.0.0.1.

    lambda/scripts/cold-start.py BOOTSTRAP EVENT.json [-n 30] [--also OTHER_BOOTSTRAP ...]

Prints the binary's size and the median and 90th percentile of both times. With
--also, the bootstraps take turns, one cold start each, so that a change of load on
the machine falls on all of them alike (to compare two builds). Run it
on a quiet machine; it measures the binary for the host architecture (build it with
`cargo build --release -p consumer-sqs`, or `cargo lambda build --release` without
`--arm64`).
"""
import argparse
import http.server
import json
import os
import pathlib
import signal
import statistics
import subprocess
import threading
import time


class Runtime(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, event: bytes):
        super().__init__(("127.0.0.1", 0), Handler)
        self.event = event
        self.reset()

    def reset(self):
        self.first_next = None
        self.responded = None
        self.handed = False
        self.body = None
        self.done = threading.Event()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        server: Runtime = self.server
        if not self.path.endswith("/runtime/invocation/next"):
            self.send_error(404)
            return
        if server.first_next is None:
            server.first_next = time.perf_counter()
        if server.handed:
            # The second poll: the invocation is over, and the process can be
            # stopped without a request of it still on the way.
            server.done.set()
            self.close_connection = True
            return
        server.handed = True
        server.sent = time.perf_counter()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Lambda-Runtime-Aws-Request-Id", "cold-start-1")
        self.send_header("Lambda-Runtime-Deadline-Ms", str(int(time.time() * 1000) + 30000))
        self.send_header("Lambda-Runtime-Invoked-Function-Arn", "arn:aws:lambda:eu-west-1:123456789012:function:f")
        self.send_header("Lambda-Runtime-Trace-Id", "Root=1-00000000-000000000000000000000000")
        self.send_header("Content-Length", str(len(server.event)))
        self.end_headers()
        self.wfile.write(server.event)

    def do_POST(self):
        server: Runtime = self.server
        length = int(self.headers.get("Content-Length", 0))
        server.body = self.rfile.read(length)
        server.responded = time.perf_counter()
        server.path_posted = self.path
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bootstrap", type=pathlib.Path)
    parser.add_argument("event", type=pathlib.Path)
    parser.add_argument("-n", type=int, default=30)
    parser.add_argument("--also", type=pathlib.Path, action="append", default=[],
                        help="another bootstrap, measured in turn with the first")
    args = parser.parse_args()
    bootstraps = [args.bootstrap, *args.also]

    server = Runtime(args.event.read_bytes())
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host, port = server.server_address
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AWS_LAMBDA_RUNTIME_API": f"{host}:{port}",
        "AWS_LAMBDA_FUNCTION_NAME": "cold-start",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128",
        "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
        "AWS_LAMBDA_LOG_STREAM_NAME": "cold-start",
        "AWS_LAMBDA_LOG_GROUP_NAME": "/aws/lambda/cold-start",
        "AWS_REGION": "eu-west-1",
        "AWS_LAMBDA_LOG_LEVEL": "warn",
    }
    inits = {b: [] for b in bootstraps}
    invokes = {b: [] for b in bootstraps}
    for _ in range(args.n):
        for bootstrap in bootstraps:
            server.reset()
            started = time.perf_counter()
            proc = subprocess.Popen([str(bootstrap)], env=env, stdout=subprocess.DEVNULL, stderr=None if os.environ.get("COLD_START_DEBUG") else subprocess.DEVNULL)
            try:
                if not server.done.wait(30):
                    raise SystemExit(f"{bootstrap} never answered its first invocation")
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
            if not server.path_posted.endswith("/response"):
                raise SystemExit(f"the invocation failed: {server.path_posted} {server.body[:300]!r}")
            inits[bootstrap].append((server.first_next - started) * 1000)
            invokes[bootstrap].append((server.responded - server.sent) * 1000)

    def summary(values):
        values = sorted(values)
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        return f"median {statistics.median(values):.2f} ms, p90 {p90:.2f} ms"

    for bootstrap in bootstraps:
        size = bootstrap.stat().st_size
        print(f"{bootstrap}: {size} bytes ({size / 1e6:.2f} MB)")
        print(f"  init (start → first /next), {args.n} cold starts: {summary(inits[bootstrap])}")
        print(f"  first invocation ({args.event.name}): {summary(invokes[bootstrap])}")
    print(f"  response: {json.loads(server.body) if server.body else None}")


if __name__ == "__main__":
    main()
