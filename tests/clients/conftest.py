"""Fixtures: a spawned `tessera all-in-one` and a runner for the unmodified `openstack` CLI."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import pytest

TESSERA = os.environ.get("TESSERA_BIN", os.path.join(os.path.dirname(__file__), "../../target/debug/tessera"))


def free_ports(n):
    """n distinct free ports (the sockets stay bound until all are chosen, so none is handed out twice)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class Cloud:
    def __init__(self, state_dir, proc, ready_line, netns=None):
        self.state_dir = state_dir
        self.proc = proc
        self.ready_line = ready_line
        # A cloud running inside a network namespace is reached from inside it.
        self.netns = netns

    def openrc_env(self):
        """The environment after `source DIR/openrc`."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        with open(os.path.join(self.state_dir, "openrc")) as f:
            for line in f:
                m = re.match(r"export (OS_[A-Z_]+)=(.*)$", line.strip())
                if m:
                    env[m.group(1)] = m.group(2).strip("'\"")
        return env

    def cloud_env(self):
        """The environment for `OS_CLOUD=tessera` with the clouds.yaml all-in-one wrote."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
        env["OS_CLIENT_CONFIG_FILE"] = os.path.join(self.state_dir, "clouds.yaml")
        env["OS_CLOUD"] = "tessera"
        return env

    def user_env(self, user, password, project):
        env = {k: v for k, v in self.openrc_env().items() if k not in ("OS_USERNAME", "OS_PASSWORD", "OS_PROJECT_NAME")}
        env.update(OS_USERNAME=user, OS_PASSWORD=password, OS_PROJECT_NAME=project)
        return env

    def os(self, *args, env=None, check=True):
        """Run `openstack ARGS`; with `-f json` the output is parsed."""
        env = env or self.openrc_env()
        prefix = ["ip", "netns", "exec", self.netns] if self.netns else []
        p = subprocess.run([*prefix, "openstack", *args], env=env, capture_output=True, text=True, timeout=120)
        if check and p.returncode != 0:
            raise AssertionError(f"openstack {' '.join(args)} failed ({p.returncode}):\n{p.stdout}\n{p.stderr}")
        if check and "json" in args:
            return json.loads(p.stdout) if p.stdout.strip() else None
        return p


def start_cloud(state_dir, extra_conf="", netns=None, data_plane=False):
    """Start an all-in-one. Its network data plane is off unless asked for (it wires the host it runs on:
    tests that want it run the cloud in a network namespace of their own, `netns`)."""
    conf = os.path.join(state_dir, "test.conf")
    with open(conf, "w") as f:
        ports = free_ports(5)
        f.write(f"[DEFAULT]\nosapi_compute_listen_port = {ports[3]}\n"
                f"[identity]\nbind_port = {ports[0]}\n[image]\nbind_port = {ports[1]}\n"
                f"[placement]\nbind_port = {ports[2]}\n[network]\nbind_port = {ports[4]}\n"
                f"[network_agent]\ndata_plane = {'true' if data_plane else 'false'}\n{extra_conf}")
    prefix = ["ip", "netns", "exec", netns] if netns else []
    proc = subprocess.Popen(
        [*prefix, TESSERA, "--config", conf, "all-in-one", "--state-dir", state_dir],
        stdout=subprocess.PIPE, stderr=open(os.path.join(state_dir, "tessera.log"), "w"), text=True,
    )
    deadline = time.time() + 60
    line = ""
    while time.time() < deadline:
        line = proc.stdout.readline()
        if "ready" in line or proc.poll() is not None:
            break
    if "ready" not in line:
        proc.kill()
        with open(os.path.join(state_dir, "tessera.log")) as f:
            raise RuntimeError(f"tessera all-in-one did not start: {line}\n{f.read()[-3000:]}")
    return proc, line


def stop(proc):
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            return None
    return proc.returncode


@pytest.fixture(scope="module")
def cloud():
    state_dir = tempfile.mkdtemp(prefix="tessera-clients-")
    proc, line = start_cloud(state_dir)
    c = Cloud(state_dir, proc, line)
    yield c
    stop(proc)
    shutil.rmtree(state_dir, ignore_errors=True)
