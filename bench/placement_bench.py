#!/usr/bin/env python3
"""Placement figures, side by side in one run: openstack-placement (uWSGI, 2 processes, PostgreSQL, noauth2)
against Tessera's placement on PostgreSQL and on SQLite, on the same generated data.

Called by bench/placement.sh, which builds Tessera and prepares the upstream venv. Standard library only.
For each size (default 1,000 and 10,000 providers) and each server, on a fresh database:
  - provider creation: POST /resource_providers, PUT inventories (VCPU, MEMORY_MB, DISK_GB), PUT traits,
    PUT aggregates, from 8 client threads; providers per second;
  - GET /allocation_candidates (Nova's query at 1.36: VCPU:1, MEMORY_MB:512, DISK_GB:10,
    required=!COMPUTE_STATUS_DISABLED), sequential, p50/p95, with limit=50 and without a limit;
  - allocation writes: PUT /allocations/{consumer} (1.38, consumer_generation null) for 1,000 consumers from
    8 client threads; consumers per second;
  - server RSS after all that (upstream: uWSGI master and workers together).
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
import threading
import time
import urllib.parse
import uuid

THREADS = 8
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


def in_threads(n_items, work):
    """Run work(client_index, item) over items 0..n_items-1 split across THREADS threads."""
    errors = []

    def run(t):
        try:
            for i in range(t, n_items, THREADS):
                work(t, i)
        except Exception as e:  # surfaced below
            errors.append(e)

    ts = [threading.Thread(target=run, args=(t,)) for t in range(THREADS)]
    start = time.time()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    if errors:
        raise errors[0]
    return time.time() - start


def load(port, token, n):
    clients = [Client(port, token) for _ in range(THREADS)]
    uuids = [None] * n

    def create(t, i):
        c = clients[t]
        s, rp = c.call("POST", "/resource_providers", {"name": f"cn{i:06d}"})
        assert s == 200, (s, rp)
        u = rp["uuid"]
        s, b = c.call("PUT", f"/resource_providers/{u}/inventories", {
            "resource_provider_generation": rp["generation"],
            "inventories": {"VCPU": {"total": 32, "allocation_ratio": 4.0},
                            "MEMORY_MB": {"total": 131072, "reserved": 512},
                            "DISK_GB": {"total": 2000}}})
        assert s == 200, (s, b)
        traits = [TRAITS[0]] if i % 2 == 0 else []
        if i % 3 == 0:
            traits.append(TRAITS[1])
        if i % 50 == 0:
            traits.append(TRAITS[2])
        s, b = c.call("PUT", f"/resource_providers/{u}/traits",
                      {"resource_provider_generation": b["resource_provider_generation"], "traits": traits})
        assert s == 200, (s, b)
        s, b = c.call("PUT", f"/resource_providers/{u}/aggregates",
                      {"resource_provider_generation": b["resource_provider_generation"],
                       "aggregates": [AGGREGATES[i % len(AGGREGATES)]]})
        assert s == 200, (s, b)
        uuids[i] = u

    secs = in_threads(n, create)
    return n / secs, uuids


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


def allocate(port, token, rps, n=1000):
    clients = [Client(port, token) for _ in range(THREADS)]
    project, user = str(uuid.uuid4()), str(uuid.uuid4())

    def put(t, i):
        body = {"allocations": {rps[i % len(rps)]: {"resources": {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 10}}},
                "project_id": project, "user_id": user, "consumer_generation": None, "consumer_type": "INSTANCE"}
        s, b = clients[t].call("PUT", f"/allocations/{uuid.uuid4()}", body, mv="1.38")
        assert s == 204, (s, b)

    return n / in_threads(n, put)


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
        ports = free_ports(3)
        conf = os.path.join(state, "bench.conf")
        extra = ""
        if self.backend == "pg":
            db = "bench_placement_tessera"
            psql(self.admin_url, f"DROP DATABASE IF EXISTS {db}")
            psql(self.admin_url, f"CREATE DATABASE {db}")
            extra = f"[placement_database]\nconnection = {pg_url(self.admin_url, db, 'postgresql')}\n"
        with open(conf, "w") as f:
            f.write(f"[identity]\nbind_port = {ports[0]}\n[image]\nbind_port = {ports[1]}\n"
                    f"[placement]\nbind_port = {ports[2]}\n{extra}")
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


def measure(server, n):
    server.start()
    try:
        created, rps = load(server.port, server.token, n)
        reps_nolimit = 5 if n >= 10000 and isinstance(server, Upstream) else 20
        lim = candidates(server.port, server.token, 50, 50)
        nolim = candidates(server.port, server.token, reps_nolimit, None)
        allocs = allocate(server.port, server.token, rps)
        rss = rss_mb(server.pids())
        return {"create": created, "lim": lim, "nolim": nolim, "alloc": allocs, "rss": rss}
    finally:
        server.stop()


def main():
    binary, venv, admin_url = sys.argv[1], sys.argv[2], sys.argv[3]
    sizes = [int(s) for s in sys.argv[4:]] or [1000, 10000]
    work = tempfile.mkdtemp(prefix="tessera-bench-placement-")
    servers = [Upstream(venv, admin_url, work), Tessera(binary, "pg", admin_url, work),
               Tessera(binary, "sqlite", admin_url, work)]
    for n in sizes:
        results = []
        for s in servers:
            print(f"== {n} providers: {s.name}", flush=True)
            results.append(measure(s, n))
        up = results[0]
        print(f"\n{n} providers (candidates query: {QUERY})")
        print(f"{'figure':44}" + "".join(f"{s.name:>52}" for s in servers))

        def row(label, key, fmt, better_low=False):
            cells = []
            for r in results:
                v = key(r)
                ratio = (key(up) / v if better_low else v / key(up)) if v and key(up) else 0
                cells.append(f"{fmt(v)}" + ("" if r is up else f" ({ratio:.1f}×)"))
            print(f"{label:44}" + "".join(f"{c:>52}" for c in cells))

        row("provider creation (providers/s)", lambda r: r["create"], lambda v: f"{v:.0f}")
        row("candidates, limit=50: p50 (ms)", lambda r: r["lim"][0], lambda v: f"{v:.1f}", True)
        row("candidates, limit=50: p95 (ms)", lambda r: r["lim"][1], lambda v: f"{v:.1f}", True)
        row("candidates, no limit: p50 (ms)", lambda r: r["nolim"][0], lambda v: f"{v:.1f}", True)
        row("candidates, no limit: p95 (ms)", lambda r: r["nolim"][1], lambda v: f"{v:.1f}", True)
        row("candidates returned without limit", lambda r: r["nolim"][2], lambda v: f"{v}")
        row("allocation writes, 1,000 consumers (/s)", lambda r: r["alloc"], lambda v: f"{v:.0f}")
        row("server RSS after the run (MB)", lambda r: r["rss"], lambda v: f"{v:.1f}", True)
        print(flush=True)


if __name__ == "__main__":
    main()
