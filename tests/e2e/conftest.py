"""Fixtures for the end-to-end tests: real broker binary, real upstream MCP servers, real SDK
clients. Every process binds 127.0.0.1 on a port the OS picks, and is stopped after its test."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx2 as httpx
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
BROKER_BIN = Path(os.environ.get("TOLLGATE_BROKER_BIN", ROOT / "target" / "debug" / "tollgate-broker"))
EVERYTHING = HERE / "node_modules" / "@modelcontextprotocol" / "server-everything" / "dist" / "index.js"
PY_SERVER = HERE / "servers" / "py_server.py"
LOOPBACK = HERE / "servers" / "loopback.cjs"
TS_CLIENT = HERE / "ts" / "client.mjs"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@dataclass
class Proc:
    """A background process whose output goes to files the test can read."""

    popen: subprocess.Popen
    stdout_path: Path
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


class Procs:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.procs: list[Proc] = []

    def start(self, name: str, argv: list[str], env: dict | None = None) -> Proc:
        out = self.tmp / f"{name}.out"
        err = self.tmp / f"{name}.err"
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out.open("wb"),
            stderr=err.open("wb"),
            env={**os.environ, **(env or {})},
            cwd=self.tmp,
        )
        proc = Proc(p, out, err)
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for p in reversed(self.procs):
            p.stop()


@pytest.fixture
def procs(tmp_path):
    p = Procs(tmp_path)
    yield p
    p.stop_all()


def everything_stdio_command() -> list[str]:
    return ["node", str(EVERYTHING), "stdio"]


FILESYSTEM = HERE / "node_modules" / "@modelcontextprotocol" / "server-filesystem" / "dist" / "index.js"


def filesystem_stdio_command(root: str) -> list[str]:
    """The reference filesystem server, allowed to touch `root` only."""
    return ["node", str(FILESYSTEM), root]


def py_stdio_command() -> list[str]:
    return [PYTHON, str(PY_SERVER), "stdio"]


@pytest.fixture
def everything_http(procs):
    """server-everything in Streamable HTTP mode, bound to loopback; yields its MCP URL."""
    port = free_port()
    procs.start("everything-http", ["node", "--require", str(LOOPBACK), str(EVERYTHING), "streamableHttp"], {"PORT": str(port)})
    wait_for_port(port)
    return f"http://127.0.0.1:{port}/mcp"


@pytest.fixture
def py_http(procs):
    """The Python SDK test server in Streamable HTTP mode; yields (URL, its Proc)."""
    port = free_port()
    proc = procs.start("py-http", [PYTHON, str(PY_SERVER), "http", str(port)])
    wait_for_port(port)
    return f"http://127.0.0.1:{port}/mcp", proc


CONSOLE_BIN = Path(os.environ.get("TOLLGATE_CONSOLE_BIN", ROOT / "target" / "debug" / "tollgate"))


def console_cli(b: "Broker", token: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run the `tollgate` console binary against a broker's console API as `token`."""
    env = {**os.environ, "TOLLGATE_URL": b.console, "TOLLGATE_TOKEN": token, "XDG_CONFIG_HOME": "/nonexistent"}
    return subprocess.run([str(CONSOLE_BIN), *args], capture_output=True, text=True, timeout=timeout, env=env)


def broker_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(BROKER_BIN), *args], capture_output=True, text=True, timeout=timeout)


@dataclass
class Broker:
    base: str
    console: str
    proc: Proc
    config_path: Path
    data_dir: Path
    admin: str = ""

    def url(self, server: str) -> str:
        return f"{self.base}/mcp/{server}"

    def log(self) -> str:
        return self.proc.stderr()

    def token(self, name: str, role: str, servers: str | None = None) -> str:
        """Create an identity with `tollgate-broker token add` (works while the broker runs)."""
        args = ["token", "add", "--data-dir", str(self.data_dir), "--name", name, "--role", role]
        if servers:
            args += ["--servers", servers]
        out = broker_cli(*args)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def connect(self, token: str) -> "Console":
        return Console(self.console, token)

    def audit(self, *filters: str) -> list[dict]:
        """Stop the broker (the store is single-writer) and read its audit trail."""
        code = self.proc.stop()
        assert code == 0, f"broker exited with {code}: {self.log()[-2000:]}"
        out = broker_cli("audit", "--config", str(self.config_path), "--json", "--limit", "100000", *filters)
        assert out.returncode == 0, out.stderr
        return [json.loads(line) for line in out.stdout.splitlines()]


class Console:
    """A console API client over a real WebSocket (the `websockets` library)."""

    def __init__(self, url: str, token: str):
        from websockets.sync.client import connect

        self.ws = connect(url, additional_headers={"Authorization": f"Bearer {token}"}, open_timeout=10, max_size=None)
        self.backlog: list[dict] = []
        self.hello = self.next("hello")
        self.snapshot = self.next("snapshot")
        self.req = 0

    def recv(self, timeout: float = 15) -> dict:
        if self.backlog:
            return self.backlog.pop(0)
        return json.loads(self.ws.recv(timeout=timeout))

    def next(self, kind: str, timeout: float = 15, where=None) -> dict:
        """The next message of a type (and matching `where`), keeping others for later."""
        deadline = time.monotonic() + timeout
        kept = []
        try:
            for i, m in enumerate(self.backlog):
                if m["type"] == kind and (where is None or where(m)):
                    return self.backlog.pop(i)
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {kind} message within {timeout}s; got {kept + self.backlog}")
                m = json.loads(self.ws.recv(timeout=left))
                if m["type"] == kind and (where is None or where(m)):
                    return m
                kept.append(m)
        finally:
            self.backlog.extend(kept)

    def send(self, msg: dict) -> int:
        self.req += 1
        self.ws.send(json.dumps({**msg, "req": self.req}))
        return self.req

    def request(self, msg: dict, answer: str, timeout: float = 15) -> dict:
        req = self.send(msg)
        return self.next(answer, timeout, where=lambda m: m.get("req") == req or m["type"] == "error")

    def pending(self, timeout: float = 15, where=None) -> dict:
        return self.next("call_pending", timeout, where=(lambda m: where(m["call"])) if where else None)["call"]

    def decide(self, ids, verdict: str, reason: str | None = None) -> list[dict]:
        ids = [ids] if isinstance(ids, str) else ids
        msg = {"type": "decide", "target": {"by": "ids", "ids": ids}, "verdict": verdict}
        if reason:
            msg["reason"] = reason
        return self.request(msg, "decided")["results"]

    def close(self):
        self.ws.close()


@pytest.fixture
def broker(procs, tmp_path):
    """Start a broker on a config (TOML text without [broker] listen/data_dir); returns Broker."""
    started = []

    def start(config: str, name: str = "broker", env: dict | None = None, listen: str = "127.0.0.1:0", data_name: str | None = None, prefix: list[str] | None = None, console_listen: str = "127.0.0.1:0") -> Broker:
        """`prefix` runs the broker under a command (`ip netns exec NS`); then `listen` and
        `console_listen` name an address the tests reach it on."""
        data = tmp_path / f"{data_name or name}-data"
        body = textwrap.dedent(config)
        admin = "" if "admin_listen" in body else 'admin_listen = "127.0.0.1:0"\n'
        head = f'[broker]\nlisten = "{listen}"\nconsole_listen = "{console_listen}"\n{admin}data_dir = "{data}"\n'
        if "[broker]" in body:
            body = body.replace("[broker]\n", "", 1)
        path = tmp_path / f"{name}.toml"
        path.write_text(head + body)
        proc = procs.start(name, [*(prefix or []), str(BROKER_BIN), "serve", "--config", str(path)], {"RUST_LOG": "info", **(env or {})})
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            out = proc.stdout()
            m = re.search(r"listening on (https?://[0-9.]+:\d+)", out)
            c = re.search(r"consoles -> (wss?://\S+)", out)
            a = re.search(r"metrics -> (https?://\S+)/metrics", out)
            if m and c and (a or "admin_listen" in body):
                b = Broker(m.group(1), c.group(1), proc, path, data, a.group(1) if a else "")
                started.append(b)
                return b
            if proc.popen.poll() is not None:
                raise RuntimeError(f"broker exited early ({proc.popen.returncode}): {proc.stderr()}")
            time.sleep(0.05)
        raise TimeoutError(f"broker did not start: {proc.stderr()}")

    return start


def pg_bin(name: str) -> str:
    """A PostgreSQL server program: on PATH, else Debian's versioned directory."""
    import glob

    found = shutil.which(name) or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)
    assert found, f"{name} not found: ./dev installs Debian's postgresql"
    return found


class PgCluster:
    """A throwaway PostgreSQL cluster in a temporary directory, on a loopback port; run as the
    `postgres` user when the tests run as root (PostgreSQL refuses root)."""

    def __init__(self):
        # Not under pytest's tmp_path: its parents are private to root, and the server runs as
        # `postgres`.
        self.root = root = Path(tempfile.mkdtemp(prefix="tollgate-pg-"))
        self.data = root / "data"
        self.port = free_port()
        root.mkdir(parents=True, exist_ok=True)
        self.as_user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_user:
            subprocess.run(["chown", "postgres", str(root)], check=True)
        out = subprocess.run(
            [*self.as_user, pg_bin("initdb"), "-D", str(self.data), "-U", "tollgate", "--auth=trust", "-E", "UTF8", "--no-sync"],
            capture_output=True, text=True,
        )
        assert out.returncode == 0, out.stderr
        self.dbs = 0

    def start(self, tls=None, also: str | None = None):
        """Start it; `tls` (a certs.Pair) turns TLS on with that certificate; `also` is one more
        address to listen on, whose /24 may connect."""
        listen = "127.0.0.1"
        if also:
            listen += f",{also}"
            net = also.rsplit(".", 1)[0] + ".0/24"
            with open(self.data / "pg_hba.conf", "a") as f:
                f.write(f"host all all {net} trust\n")
        opts = f"-p {self.port} -k {self.root} -c listen_addresses={listen} -c max_connections=300 -c fsync=on"
        if tls is not None:
            if self.as_user:
                subprocess.run(["chown", "postgres", str(tls.cert), str(tls.key)], check=True)
            opts += f" -c ssl=on -c ssl_cert_file={tls.cert} -c ssl_key_file={tls.key}"
        out = subprocess.run(
            [*self.as_user, pg_bin("pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.root / "log"), "-w", "start"],
            capture_output=True, text=True, timeout=60,
        )
        assert out.returncode == 0, out.stdout + out.stderr + (self.root / "log").read_text()

    def stop(self, mode: str = "fast"):
        subprocess.run([*self.as_user, pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"], capture_output=True, timeout=60)

    def remove(self):
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def sql(self, db: str, query: str) -> str:
        out = subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tollgate", "-d", db, "-Atc", query], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def database(self) -> str:
        """A new empty database; returns its URL."""
        self.dbs += 1
        name = f"t{self.dbs}"
        out = subprocess.run(["createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "tollgate", name], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        return f"postgres://tollgate@127.0.0.1:{self.port}/{name}"


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """One PostgreSQL cluster for the session (each test takes its own database)."""
    cluster = PgCluster()
    cluster.start()
    yield cluster
    cluster.remove()


def toml_list(argv: list[str]) -> str:
    return json.dumps(argv)


# A handshake-revision initialize request, for tests that speak raw HTTP.
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "raw", "version": "1"}},
}


def open_config(servers: dict[str, str], extra: str = "") -> str:
    """A config without authentication that allows every call; servers maps name -> TOML line."""
    blocks = "".join(f'[[server]]\nname = "{n}"\n{line}\n' for n, line in servers.items())
    return f'[broker]\nauth = "none"\n{extra}[policy]\ndefault = "allow"\n{blocks}'


def run_ts(scenario: dict, timeout: float = 60) -> dict:
    """Run the TypeScript SDK client on a scenario; returns what it printed (JSON)."""
    out = subprocess.run(
        ["node", str(TS_CLIENT), json.dumps(scenario)], capture_output=True, text=True, timeout=timeout, cwd=HERE
    )
    assert out.returncode == 0, f"TS client failed ({out.returncode}): {out.stderr[-3000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])


def sdk_client(url: str, token: str, timeout: float = 60, connections: int = 100):
    """A Python mcp SDK client on Streamable HTTP that sends a bearer token. Each held call keeps
    a connection open, so a test holding many at once raises `connections`."""
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    http = httpx.AsyncClient(
        headers={"Authorization": f"Bearer {token}"},
        timeout=timeout,
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=50),
    )
    return Client(streamable_http_client(url, http_client=http))


def sdk_call(url: str, token: str, tool: str, args: dict):
    """Call a tool with the Python SDK in a thread; returns a Future of the CallToolResult."""
    import concurrent.futures

    import anyio

    async def run():
        async with sdk_client(url, token) as c:
            return await c.call_tool(tool, args)

    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(anyio.run, run)
    pool.shutdown(wait=False)
    return fut


def sdk_burst(url: str, token: str, calls: list[tuple[str, dict]]) -> list:
    """Make all `calls` (tool, arguments) at once on one Python SDK session; returns the
    results in completion order (a held call keeps its connection open, so the session gets
    enough connections for every call)."""
    import anyio

    async def run():
        results = []
        async with sdk_client(url, token, connections=len(calls) + 20) as c:

            async def one(tool, args):
                results.append(await c.call_tool(tool, args))

            async with anyio.create_task_group() as tg:
                for tool, args in calls:
                    tg.start_soon(one, tool, args)
        return results

    return anyio.run(run)


def post(url: str, body, headers: dict | None = None, **kw) -> httpx.Response:
    h = {"accept": "application/json, text/event-stream", "content-type": "application/json", **(headers or {})}
    data = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=data, headers=h, timeout=kw.pop("timeout", 30), **kw)


class Stream:
    """An SSE request read in a thread; collects events (id, data)."""

    def __init__(self, method: str, url: str, headers: dict, body: dict | None = None):
        self.events: list[tuple[str | None, str]] = []
        self.first = threading.Event()
        self.done = threading.Event()
        self.error: Exception | None = None
        self.t = threading.Thread(target=self._run, args=(method, url, headers, body), daemon=True)
        self.t.start()

    def _run(self, method, url, headers, body):
        try:
            with httpx.stream(method, url, json=body, headers=headers, timeout=60) as r:
                ev_id = None
                for line in r.iter_lines():
                    if line.startswith("id: "):
                        ev_id = line[4:]
                    elif line.startswith("data: "):
                        self.events.append((ev_id, line[6:]))
                        self.first.set()
        except Exception as e:  # the broker is killed mid-stream on purpose
            self.error = e
        finally:
            self.first.set()
            self.done.set()

    def results(self) -> list[dict]:
        return [json.loads(d) for _, d in self.events if d and '"result"' in d]
