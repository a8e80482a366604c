"""TLS on both listeners: consoles over wss:// (the CLI and the TUI), MCP clients over https://
(the Python SDK and the stdio bridge), mutual TLS, certificate reload without dropped
connections, one clear line for each certificate problem, and plain listeners kept to
loopback. Certificates are made in the test (certs.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time

import anyio
import pytest
from mcp import Client, StdioServerParameters

from certs import issue, make_ca
from conftest import BROKER_BIN, CONSOLE_BIN, broker_cli, py_stdio_command, toml_list
from test_console import keys, tmux, tmux_session, wait_screen  # noqa: F401 (fixture)


def config(pair, extra_tls: str = "", broker_extra: str = "") -> str:
    return f"""
    [broker]
    {broker_extra}
    [broker.tls]
    cert = "{pair.cert}"
    key = "{pair.key}"
    {extra_tls}
    [policy]
    default = "allow"
    [[server]]
    name = "py"
    command = {toml_list(py_stdio_command())}
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["py/echo"]
    action = "approve"
    """


def port_of(url: str) -> int:
    return int(re.search(r":(\d+)", url.split("//", 1)[1]).group(1))


def console(url: str, token: str, *args: str, ca=None, cert=None, key=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOLLGATE_URL": url, "TOLLGATE_TOKEN": token, "XDG_CONFIG_HOME": "/nonexistent"}
    extra = []
    for flag, v in (("--ca", ca), ("--cert", cert), ("--key", key)):
        if v:
            extra += [flag, str(v)]
    return subprocess.run([str(CONSOLE_BIN), *extra, *args], capture_output=True, text=True, timeout=30, env=env)


def sdk_over_tls(url: str, token: str, cafile, tool: str, args: dict):
    """The Python SDK over https with the test CA, in a thread; returns a Future."""
    import concurrent.futures

    import httpx2 as httpx
    from mcp.client.streamable_http import streamable_http_client

    async def run():
        http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"}, timeout=60, verify=ssl.create_default_context(cafile=str(cafile))
        )
        async with Client(streamable_http_client(url, http_client=http)) as c:
            return await c.call_tool(tool, args)

    pool = concurrent.futures.ThreadPoolExecutor(1)
    fut = pool.submit(anyio.run, run)
    pool.shutdown(wait=False)
    return fut


def wait_pending(url, token, ca, n=1, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = console(url, token, "list", "--json", ca=ca)
        assert r.returncode == 0, r.stderr
        calls = json.loads(r.stdout)
        if len(calls) >= n:
            return calls
        time.sleep(0.2)
    raise TimeoutError("no held call")


def test_consoles_sdk_clients_and_the_bridge_work_over_tls(broker, tmp_path, tmux_session):
    ca = make_ca(tmp_path)
    b = broker(config(issue(ca, tmp_path, "broker", dns=("localhost",))))
    assert b.base.startswith("https://") and b.console.startswith("wss://"), (b.base, b.console)
    wss = f"wss://localhost:{port_of(b.console)}/v1/console"
    mcp_url = f"https://localhost:{port_of(b.base)}/mcp/py"
    agent = b.token("agent", "viewer")
    alice = b.token("alice", "approver")

    # The SDK's held call, approved from the TUI over wss://.
    first = sdk_over_tls(mcp_url, agent, ca.cert, "echo", {"message": "over tls"})
    wait_pending(wss, alice, ca.cert)
    cmd = (
        f"env TOLLGATE_URL={wss} TOLLGATE_TOKEN={alice} TOLLGATE_CA={ca.cert} XDG_CONFIG_HOME=/nonexistent {CONSOLE_BIN}"
    )
    tmux("new-session", "-d", "-s", tmux_session, "-x", "100", "-y", "30", cmd)
    wait_screen(tmux_session, r"1 pending · ● connected")
    keys(tmux_session, "a")
    wait_screen(tmux_session, r"echo approved by alice")
    assert first.result(30).content[0].text == "Echo: over tls"

    # A second one, approved with the CLI over wss://.
    second = sdk_over_tls(mcp_url, agent, ca.cert, "echo", {"message": "again"})
    [call] = wait_pending(wss, alice, ca.cert)
    r = console(wss, alice, "approve", call["id"], ca=ca.cert)
    assert r.returncode == 0, r.stderr
    assert second.result(30).content[0].text == "Echo: again"

    # The stdio bridge over https://, an allowed call.
    async def bridged():
        params = StdioServerParameters(
            command=str(BROKER_BIN), args=["connect", mcp_url, "--ca", str(ca.cert)], env={"TOLLGATE_TOKEN": agent}
        )
        async with Client(params) as c:
            tools = await c.list_tools()
            denied = await c.call_tool("delete_bucket", {"bucket": "b"})
            return sorted(t.name for t in tools.tools), denied.content[0].text

    names, text = anyio.run(bridged)
    assert "echo" in names and "delete_bucket" in names
    assert text == "deleted b"
    audit = b.audit()
    assert [e["outcome"] for e in audit if e["tool"] == "echo"].count("approved") == 2
    assert [e["approvers"] for e in audit if e["outcome"] == "approved"] == [["alice"], ["alice"]]


def one_line(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_each_certificate_problem_is_one_clear_line(broker, tmp_path):
    ca = make_ca(tmp_path)
    other = make_ca(tmp_path, "someone-elses-ca")
    good = broker(config(issue(ca, tmp_path, "good", dns=("localhost",))), name="good")
    expired = broker(config(issue(ca, tmp_path, "old", dns=("localhost",), expired=True)), name="expired")
    mutual = broker(
        config(issue(ca, tmp_path, "mutual", dns=("localhost",)), extra_tls=f'client_ca = "{ca.cert}"\nclient_auth = "console"'),
        name="mutual",
    )
    token = good.token("alice", "approver")
    wss = lambda b: f"wss://localhost:{port_of(b.console)}/v1/console"  # noqa: E731

    # The system's CAs do not know a private CA.
    line = one_line(console(wss(good), token, "list"))
    assert "signed by a CA this client does not trust" in line and "--ca" in line, line
    assert "CN=good, signed by CN=tollgate-test-ca" in line, line
    # A CA that did not sign it.
    line = one_line(console(wss(good), token, "list", ca=other.cert))
    assert "did not sign it" in line and "CN=tollgate-test-ca" in line, line
    # A name the certificate does not have.
    ip_url = f"wss://127.0.0.1:{port_of(good.console)}/v1/console"
    line = one_line(console(ip_url, token, "list", ca=ca.cert))
    assert 'is for localhost, not "127.0.0.1"' in line, line
    # An expired certificate.
    line = one_line(console(wss(expired), token, "list", ca=ca.cert))
    assert "expired at" in line and "renew it" in line, line
    # Mutual TLS on the console listener: no certificate, one from another CA, the right one.
    mtoken = mutual.token("alice", "approver")
    line = one_line(console(wss(mutual), mtoken, "list", ca=ca.cert))
    assert "asks for a client certificate" in line and "--cert" in line, line
    stranger = issue(other, tmp_path, "stranger", client=True)
    line = one_line(console(wss(mutual), mtoken, "list", ca=ca.cert, cert=stranger.cert, key=stranger.key))
    assert "refused this client certificate" in line, line
    laptop = issue(ca, tmp_path, "alice-laptop", client=True)
    r = console(wss(mutual), mtoken, "list", "--json", ca=ca.cert, cert=laptop.cert, key=laptop.key)
    assert r.returncode == 0 and json.loads(r.stdout) == [], r.stderr
    # client_auth = "console": MCP clients of that broker need no certificate.
    agent = mutual.token("agent", "viewer")
    sdk = sdk_over_tls(f"https://localhost:{port_of(mutual.base)}/mcp/py", agent, ca.cert, "delete_bucket", {"bucket": "x"})
    assert not sdk.result(30).is_error
    # A plain ws:// URL with a CA, and wss:// to a port without TLS.
    line = one_line(console(f"ws://localhost:{port_of(good.console)}/v1/console", token, "list", ca=ca.cert))
    assert "plain ws:// URL" in line, line
    # The bridge explains the same way, on stderr and to its client.
    p = subprocess.Popen(
        [str(BROKER_BIN), "connect", f"https://localhost:{port_of(good.base)}/mcp/py"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "TOLLGATE_TOKEN": token},
    )
    p.stdin.write(
        '{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-11-25","capabilities":{},"clientInfo":{"name":"t","version":"1"}}}\n'
    )
    p.stdin.flush()
    answer = json.loads(p.stdout.readline())
    p.stdin.close()
    assert p.wait(30) == 0
    assert "signed by a CA this client does not trust" in answer["error"]["message"], answer
    assert "signed by a CA this client does not trust" in p.stderr.read()
    assert "TLS handshake failed" in mutual.log()


def peer_cn(port: int, cafile) -> str:
    ctx = ssl.create_default_context(cafile=str(cafile))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="localhost") as t:
            subject = dict(x[0] for x in t.getpeercert()["subject"])
            return subject["commonName"]


def test_a_renewed_certificate_is_used_without_dropping_connections(broker, tmp_path):
    from websockets.sync.client import connect

    ca = make_ca(tmp_path)
    first = issue(ca, tmp_path, "first")
    b = broker(config(first))
    port = port_of(b.console)
    assert peer_cn(port, ca.cert) == "first"
    token = b.token("alice", "approver")
    ctx = ssl.create_default_context(cafile=str(ca.cert))
    ws = connect(
        f"wss://localhost:{port}/v1/console", additional_headers={"Authorization": f"Bearer {token}"}, ssl=ctx, open_timeout=10
    )
    assert json.loads(ws.recv(timeout=10))["type"] == "hello"

    # SIGHUP: new connections get the new certificate at once.
    second = issue(ca, tmp_path, "second")
    first.cert.write_bytes(second.cert.read_bytes())
    first.key.write_bytes(second.key.read_bytes())
    b.proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while peer_cn(port, ca.cert) != "second":
        assert time.monotonic() < deadline, b.log()[-2000:]
        time.sleep(0.1)
    # Without a signal, a changed file is picked up within seconds.
    third = issue(ca, tmp_path, "third")
    first.key.write_bytes(third.key.read_bytes())
    first.cert.write_bytes(third.cert.read_bytes())
    deadline = time.monotonic() + 20
    while peer_cn(port, ca.cert) != "third":
        assert time.monotonic() < deadline, b.log()[-2000:]
        time.sleep(0.3)
    # A half-written certificate is refused and the last good one stays.
    first.cert.write_text("-----BEGIN CERTIFICATE-----\ntruncated")
    b.proc.popen.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "cannot reload the TLS certificate" not in b.log():
        assert time.monotonic() < deadline, b.log()[-2000:]
        time.sleep(0.1)
    assert peer_cn(port, ca.cert) == "third"
    # The connection opened before any of it still works.
    ws.send(json.dumps({"type": "snapshot", "req": 1}))
    deadline = time.monotonic() + 10
    while True:
        m = json.loads(ws.recv(timeout=10))
        if m["type"] == "snapshot" and m.get("req") == 1:
            break
        assert time.monotonic() < deadline
    ws.close()
    assert b.proc.stop() == 0


def test_plain_listeners_stay_on_loopback_unless_written_otherwise(tmp_path):
    def check(text: str) -> subprocess.CompletedProcess:
        path = tmp_path / "c.toml"
        path.write_text(text)
        return broker_cli("check", "--config", str(path))

    server = f'[[server]]\nname = "py"\ncommand = {toml_list(py_stdio_command())}\n'
    r = check(f'[broker]\nauth = "none"\nlisten = "0.0.0.0:8080"\n{server}')
    assert r.returncode != 0
    assert 'listen = "0.0.0.0:8080" is reachable from other machines' in r.stdout + r.stderr
    assert "allow_plaintext = true" in r.stdout + r.stderr
    r = check(f'[broker]\nauth = "none"\nlisten = "0.0.0.0:8080"\nallow_plaintext = true\n{server}')
    assert r.returncode == 0, r.stdout + r.stderr
    # A TLS section whose files do not load is reported by check, naming the file.
    (tmp_path / "bad.pem").write_text("not a certificate")
    r = check(f'[broker]\nauth = "none"\nconsole_listen = "0.0.0.0:8081"\n[broker.tls]\ncert = "bad.pem"\nkey = "bad.pem"\n{server}')
    assert r.returncode != 0
    assert "bad.pem" in r.stdout + r.stderr and "holds no certificate" in r.stdout + r.stderr
    # serve refuses the same config.
    r = subprocess.run(
        [str(BROKER_BIN), "serve", "--config", str(tmp_path / "c.toml")], capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 2 and "[broker.tls]" in r.stderr
