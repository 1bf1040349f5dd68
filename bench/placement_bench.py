#!/usr/bin/env python3
"""Placement figures, side by side in one run: openstack-placement (uWSGI, 2 processes, PostgreSQL, noauth2)
against Tessera's placement on PostgreSQL and on SQLite, on the same generated data.

Called by bench/placement.sh, which builds Tessera and tessera-loadgen and prepares the upstream venv.
Standard library only; the write loads run in tessera-loadgen (Rust), so the client takes little CPU.
For each size (default 1,000 and 10,000 providers) and each server, on a fresh database:
  - provider creation: POST /resource_providers, PUT inventories (VCPU, MEMORY_MB, DISK_GB), PUT traits,
    PUT aggregates, 8 providers at a time from the compiled client tessera-loadgen; providers per second;
  - GET /allocation_candidates (Nova's query at 1.36: VCPU:1, MEMORY_MB:512, DISK_GB:10,
    required=!COMPUTE_STATUS_DISABLED), sequential, p50/p95, with limit=50 and without a limit;
  - allocation writes: PUT /allocations/{consumer} (1.38, consumer_generation null) for 1,000 consumers,
    8 at a time from tessera-loadgen; consumers per second;
  - server RSS after all that (upstream: uWSGI master and workers together).
Each server is started once the machine has gone quiet after the one before. The whole round is run RUNS times
(default 3), each server in turn on a fresh database each time; every figure is the median of the runs, with
the lowest and highest beside it.
"""

import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid

CONCURRENCY = 8
LOADGEN = None  # set by main()
TRAITS = ["HW_CPU_X86_AVX2", "STORAGE_DISK_SSD", "COMPUTE_STATUS_DISABLED"]
AGGREGATES = [str(uuid.UUID(int=i + 1)) for i in range(5)]
QUERY = "resources=VCPU:1,MEMORY_MB:512,DISK_GB:10&required=!COMPUTE_STATUS_DISABLED"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_ports(n):
    """n distinct free ports (all bound at once, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_http(port, path="/", timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            c.request("GET", path)
            c.getresponse().read()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError(f"nothing answers on port {port}")


class Client:
    def __init__(self, port, token):
        self.port, self.token = port, token
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)

    def call(self, method, path, body=None, mv="1.39"):
        status, raw = self.call_raw(method, path, body, mv)
        return status, (json.loads(raw) if raw else None)

    def call_raw(self, method, path, body=None, mv="1.39"):
        headers = {"X-Auth-Token": self.token, "OpenStack-API-Version": f"placement {mv}", "Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = "application/json"
        for attempt in range(3):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                r = self.conn.getresponse()
                return r.status, r.read()
            except (http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
                if attempt == 2:
                    raise


def loadgen(*args, stdin=None):
    """Run the compiled load client (crates/loadgen) and return its JSON answer."""
    out = subprocess.run([LOADGEN, *map(str, args)], input=stdin, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"tessera-loadgen {args[0]} failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def load(port, token, n, fresh):
    r = loadgen("providers", f"http://127.0.0.1:{port}", token, n, CONCURRENCY, fresh)
    return n / r["seconds"], r["uuids"]


def candidates(port, token, reps, limit):
    c = Client(port, token)
    q = QUERY + (f"&limit={limit}" if limit else "")
    times, count = [], 0
    for _ in range(reps):
        # Timed to the last byte of the response; decoding it is the client's business.
        t0 = time.perf_counter()
        s, raw = c.call_raw("GET", f"/allocation_candidates?{q}", mv="1.36")
        times.append((time.perf_counter() - t0) * 1000)
        assert s == 200, (s, raw[:300])
        count = len(json.loads(raw)["allocation_requests"])
    times.sort()
    p95 = times[min(len(times) - 1, int(round(0.95 * (len(times) - 1))))]
    return statistics.median(times), p95, count


def allocate(port, token, rps, fresh):
    r = loadgen("allocations", f"http://127.0.0.1:{port}", token, CONCURRENCY, fresh, stdin=json.dumps(rps))
    return r["count"] / r["seconds"]


def rss_mb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total / 1024


def children(pid):
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def psql(admin_url, sql):
    subprocess.run(["psql", "-q", admin_url, "-c", sql], check=True, capture_output=True)


def pg_url(admin_url, db, scheme):
    u = urllib.parse.urlparse(admin_url)
    return urllib.parse.urlunparse(u._replace(scheme=scheme, path=f"/{db}"))


class Upstream:
    name = "openstack-placement 16.0.0 (uWSGI ×2, PostgreSQL)"

    def __init__(self, venv, admin_url, work):
        self.venv, self.admin_url, self.work = venv, admin_url, work

    def start(self):
        db = "bench_placement_upstream"
        psql(self.admin_url, f"DROP DATABASE IF EXISTS {db}")
        psql(self.admin_url, f"CREATE DATABASE {db}")
        conf_dir = os.path.join(self.work, "upstream-etc")
        os.makedirs(conf_dir, exist_ok=True)
        with open(os.path.join(conf_dir, "placement.conf"), "w") as f:
            f.write("[DEFAULT]\ndebug = False\n[api]\nauth_strategy = noauth2\n"
                    f"[placement_database]\nconnection = {pg_url(self.admin_url, db, 'postgresql+psycopg2')}\n")
        env = dict(os.environ, OS_PLACEMENT_CONFIG_DIR=conf_dir)
        subprocess.run([f"{self.venv}/bin/placement-manage", "--config-file", os.path.join(conf_dir, "placement.conf"),
                        "db", "sync"], env=env, check=True, capture_output=True)
        self.port = free_port()
        self.log = open(os.path.join(self.work, "upstream.log"), "w")
        self.proc = subprocess.Popen(
            [f"{self.venv}/bin/uwsgi", "--http-socket", f"127.0.0.1:{self.port}", "--module",
             "placement.wsgi.api:application", "--virtualenv", self.venv, "--processes", "2", "--threads", "1", "--master",
             "--die-on-term", "--lazy-apps", "--disable-logging"],
            env=env, stdout=self.log, stderr=self.log, start_new_session=True)
        wait_http(self.port)
        self.token = "admin"

    def pids(self):
        return [self.proc.pid, *children(self.proc.pid)]

    def stop(self):
        os.killpg(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=30)


class Tessera:
    def __init__(self, binary, backend, admin_url, work):
        self.binary, self.backend, self.admin_url, self.work = binary, backend, admin_url, work
        self.name = f"tessera ({'PostgreSQL' if backend == 'pg' else 'SQLite'})"

    def start(self):
        state = tempfile.mkdtemp(prefix=f"tessera-{self.backend}-", dir=self.work)
        ports = free_ports(4)
        conf = os.path.join(state, "bench.conf")
        extra = ""
        if self.backend == "pg":
            db = "bench_placement_tessera"
            psql(self.admin_url, f"DROP DATABASE IF EXISTS {db}")
            psql(self.admin_url, f"CREATE DATABASE {db}")
            extra = f"[placement_database]\nconnection = {pg_url(self.admin_url, db, 'postgresql')}\n"
        with open(conf, "w") as f:
            f.write(f"[DEFAULT]\nosapi_compute_listen_port = {ports[3]}\n"
                    f"[identity]\nbind_port = {ports[0]}\n[image]\nbind_port = {ports[1]}\n"
                    f"[placement]\nbind_port = {ports[2]}\n[network]\nbind_port = {free_port()}\n"
                    # The control plane only: no compute host registering a provider of its own.
                    f"[all_in_one]\ncells = 0\n{extra}")
        # First start bootstraps identity (admin user, keys) and creates the databases; take a token.
        aio = subprocess.Popen([self.binary, "--config", conf, "all-in-one", "--state-dir", state],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = aio.stdout.readline()
        assert "ready" in line, line
        with open(os.path.join(state, "admin-password")) as f:
            pw = f.read().strip()
        c = http.client.HTTPConnection("127.0.0.1", ports[0], timeout=30)
        c.request("POST", "/v3/auth/tokens", json.dumps({"auth": {
            "identity": {"methods": ["password"], "password": {"user": {
                "name": "admin", "domain": {"id": "default"}, "password": pw}}},
            "scope": {"project": {"name": "admin", "domain": {"id": "default"}}}}}),
            {"Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        self.token = r.getheader("X-Subject-Token")
        aio.send_signal(signal.SIGTERM)
        aio.wait(timeout=30)
        # Then the placement role alone, so RSS is placement's.
        self.port = ports[2]
        self.log = open(os.path.join(self.work, f"tessera-{self.backend}.log"), "w")
        self.proc = subprocess.Popen([self.binary, "--config", os.path.join(state, "tessera.conf"), "serve", "placement"],
                                     stdout=self.log, stderr=self.log)
        wait_http(self.port)

    def pids(self):
        return [self.proc.pid]

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=30)


def cpu_times():
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    return sum(fields), fields[3] + fields[4]


def settle(timeout=20.0):
    """Wait until the machine is quiet (over 90% idle for half a second), so that no server is measured while
    the previous one's aftermath (PostgreSQL's background writers, autovacuum) still takes CPU."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        total0, idle0 = cpu_times()
        time.sleep(0.5)
        total1, idle1 = cpu_times()
        if total1 > total0 and (idle1 - idle0) / (total1 - total0) > 0.9:
            return
    print("   (the machine did not go quiet; measuring anyway)", flush=True)


def measure(server, n):
    settle()
    server.start()
    try:
        # uWSGI's --http-socket answers one request per connection (with --http11-socket a worker would sit on
        # one client's idle connection), so the client opens a connection per request there, as the Python
        # client did; Tessera keeps connections alive.
        fresh = "fresh" if isinstance(server, Upstream) else "keepalive"
        created, rps = load(server.port, server.token, n, fresh)
        reps_nolimit = 5 if n >= 10000 and isinstance(server, Upstream) else 20
        lim = candidates(server.port, server.token, 50, 50)
        nolim = candidates(server.port, server.token, reps_nolimit, None)
        allocs = allocate(server.port, server.token, rps, fresh)
        rss = rss_mb(server.pids())
        return {"create": created, "lim": lim, "nolim": nolim, "alloc": allocs, "rss": rss}
    finally:
        server.stop()


def main():
    global LOADGEN
    binary, LOADGEN, venv, admin_url = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
    sizes = [int(s) for s in sys.argv[5:]] or [1000, 10000]
    runs = max(1, int(os.environ.get("RUNS", "3")))
    work = tempfile.mkdtemp(prefix="tessera-bench-placement-")
    servers = [Upstream(venv, admin_url, work), Tessera(binary, "pg", admin_url, work),
               Tessera(binary, "sqlite", admin_url, work)]
    for n in sizes:
        # Each run measures every server once, in turn, so that whatever drifts on the machine meets them all.
        results = [[] for _ in servers]
        for run in range(runs):
            for i, s in enumerate(servers):
                print(f"== {n} providers, run {run + 1} of {runs}: {s.name}", flush=True)
                results[i].append(measure(s, n))
        print(f"\n{n} providers (candidates query: {QUERY}); the median of {runs} runs, each on a fresh database "
              "[lowest–highest]")
        print(f"{'figure':44}" + "".join(f"{s.name:>60}" for s in servers))

        def row(label, key, fmt, better_low=False):
            up = statistics.median(key(r) for r in results[0])
            cells = []
            for i, rs in enumerate(results):
                vals = [key(r) for r in rs]
                v = statistics.median(vals)
                ratio = (up / v if better_low else v / up) if v and up else 0
                spread = f" [{fmt(min(vals))}–{fmt(max(vals))}]" if len(vals) > 1 else ""
                cells.append(f"{fmt(v)}" + ("" if i == 0 else f" ({ratio:.1f}×)") + spread)
            print(f"{label:44}" + "".join(f"{c:>60}" for c in cells))

        row("provider creation (providers/s)", lambda r: r["create"], lambda v: f"{v:.0f}")
        row("candidates, limit=50: p50 (ms)", lambda r: r["lim"][0], lambda v: f"{v:.1f}", True)
        row("candidates, limit=50: p95 (ms)", lambda r: r["lim"][1], lambda v: f"{v:.1f}", True)
        row("candidates, no limit: p50 (ms)", lambda r: r["nolim"][0], lambda v: f"{v:.1f}", True)
        row("candidates, no limit: p95 (ms)", lambda r: r["nolim"][1], lambda v: f"{v:.1f}", True)
        row("candidates returned without limit", lambda r: r["nolim"][2], lambda v: f"{v:.0f}")
        row("allocation writes, 1,000 consumers (/s)", lambda r: r["alloc"], lambda v: f"{v:.0f}")
        row("server RSS after the run (MB)", lambda r: r["rss"], lambda v: f"{v:.1f}", True)
        print(flush=True)


if __name__ == "__main__":
    main()
