"""Private Redis servers for failure tests: one we can stop, one that never answers.

The shared Redis on 6379 is never stopped or flushed by the suite; outage
scenarios run against a ``redis-server`` of our own on a free loopback port.
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import threading
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.extra_args: list[str] = []

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:  # pragma: no cover - the Makefile checks for it
            raise RuntimeError("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--protected-mode",
                "no",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError(f"private redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=5)
            self.proc = None


class BlackHole:
    """A TCP server that accepts connections and never answers (a hung Redis)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = int(self.sock.getsockname()[1])
        self.accepted: list[socket.socket] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _accept(self) -> None:
        self.sock.settimeout(0.05)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(conn)  # held open, never read, never answered

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000) is free and valid too."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 50000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a private Redis Cluster")


class PrivateCluster:
    """A three-node Redis Cluster (no replicas) on free loopback ports."""

    def __init__(self) -> None:
        self.nodes = [PrivateRedis(free_cluster_port()) for _ in range(3)]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, tmpdir: str) -> None:
        for i, node in enumerate(self.nodes):
            node.extra_args = [
                "--cluster-enabled", "yes",
                "--cluster-config-file", f"{tmpdir}/nodes-{i}.conf",
                "--dir", tmpdir,
            ]  # fmt: skip
            node.start()
        addresses = [f"127.0.0.1:{n.port}" for n in self.nodes]
        subprocess.run(
            ["redis-cli", "--cluster", "create", *addresses, "--cluster-replicas", "0",
             "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30,
        )  # fmt: skip
        # Every node, not just the first: until gossip has converged another
        # node may still answer CLUSTERDOWN, and the clients under test have a
        # 50 ms timeout and no retries.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            ready = 0
            for node in self.nodes:
                out = subprocess.run(
                    ["redis-cli", "-p", str(node.port), "cluster", "info"],
                    capture_output=True, text=True, timeout=5,
                )  # fmt: skip
                info = out.stdout
                ready += "cluster_state:ok" in info and "cluster_known_nodes:3" in info
            if ready == len(self.nodes):
                return
            time.sleep(0.1)
        raise RuntimeError("private Redis Cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


class PrivateSentinel:
    """A Redis server and one Sentinel watching it as ``mymaster``."""

    def __init__(self) -> None:
        self.master = PrivateRedis()
        self.sentinel = PrivateRedis()
        # A name of its own: django-redis keeps connection pools per URL for the
        # life of the process, so a reused name would find an earlier, dead Sentinel.
        self.service = f"perfkit{self.master.port}"

    def start(self, tmpdir: str) -> None:
        self.master.start()
        config = f"{tmpdir}/sentinel.conf"
        with open(config, "w") as f:
            f.write(
                f"sentinel monitor {self.service} 127.0.0.1 {self.master.port} 1\n"
                f"sentinel down-after-milliseconds {self.service} 5000\n"
            )
        binary = shutil.which("redis-server")
        assert binary is not None
        self.sentinel.proc = subprocess.Popen(
            [binary, config, "--sentinel", "--port", str(self.sentinel.port),
             "--bind", "127.0.0.1", "--protected-mode", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            out = subprocess.run(
                ["redis-cli", "-p", str(self.sentinel.port), "sentinel",
                 "get-master-addr-by-name", self.service],
                capture_output=True, text=True, timeout=5,
            )  # fmt: skip
            if str(self.master.port) in out.stdout:
                return
            time.sleep(0.1)
        raise RuntimeError("private Redis Sentinel did not start")

    def stop(self) -> None:
        self.sentinel.stop()
        self.master.stop()
