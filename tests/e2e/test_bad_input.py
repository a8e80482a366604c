"""Bad input of every kind gets a clear error, never a panic or a hang, and the broker stays up."""

from __future__ import annotations

import json
import socket
import subprocess
import threading

import anyio
import pytest
from mcp import Client

from conftest import BROKER_BIN, INIT, everything_stdio_command, open_config, post, py_stdio_command, toml_list


@pytest.fixture
def open_broker(broker):
    return broker(
        open_config(
            {"everything": f"command = {toml_list(everything_stdio_command())}", "py": f"command = {toml_list(py_stdio_command())}"},
            extra='max_body = "8KiB"\n',
        )
    )


def error_of(r):
    body = r.json()
    assert body["jsonrpc"] == "2.0", body
    return body["error"]["code"], body["error"]["message"]


def test_malformed_json_is_a_parse_error(open_broker):
    r = post(open_broker.url("everything"), b'{"jsonrpc": "2.0", "id": 1, "method": ')
    assert r.status_code == 400
    code, msg = error_of(r)
    assert code == -32700 and "not valid JSON" in msg


def test_non_objects_and_batches_are_invalid_requests(open_broker):
    r = post(open_broker.url("everything"), [INIT])
    assert r.status_code == 400
    code, msg = error_of(r)
    assert code == -32600 and "batch" in msg
    r = post(open_broker.url("everything"), {"jsonrpc": "2.0", "id": {"x": 1}, "method": "ping"})
    assert error_of(r)[0] == -32600
    r = post(open_broker.url("everything"), {"id": 1, "method": "ping"})
    assert error_of(r)[0] == -32600


def test_tools_call_with_wrong_types_is_invalid_params(open_broker):
    for params in ({"name": 5}, {"name": "echo", "arguments": "not an object"}, {}):
        r = post(open_broker.url("everything"), {"jsonrpc": "2.0", "id": 9, "method": "tools/call", "params": params})
        assert r.status_code == 200
        body = r.json()
        assert body["id"] == 9 and body["error"]["code"] == -32602, body


def test_unknown_server_lists_the_known_ones(open_broker):
    r = post(f"{open_broker.base}/mcp/gihub", INIT)
    assert r.status_code == 404
    assert 'unknown server "gihub" (configured servers: everything, py)' in r.json()["error"]["message"]
    r = post(f"{open_broker.base}/elsewhere", INIT)
    assert r.status_code == 404


def test_oversized_body_is_refused_with_the_limit(open_broker):
    big = {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": {"message": "x" * 20000}}}
    r = post(open_broker.url("everything"), big)
    assert r.status_code == 413
    assert "max_body (8192 bytes)" in r.json()["error"]["message"]


def test_deeply_nested_arguments_are_refused_not_crashed_on(open_broker):
    nested = "[" * 5000 + "]" * 5000
    body = '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"echo","arguments":{"a":' + nested + "}}}"
    r = post(open_broker.url("everything"), body)
    assert r.status_code in (400, 413)
    assert r.json()["error"]["code"] in (-32700, -32600)
    # The broker is still serving.
    assert post(open_broker.url("everything"), INIT).status_code == 200


def test_disallowed_origin_is_forbidden_and_loopback_origin_is_fine(open_broker):
    r = post(open_broker.url("everything"), INIT, {"origin": "https://evil.example"})
    assert r.status_code == 403
    r = post(open_broker.url("everything"), INIT, {"origin": "http://localhost:6274"})
    assert r.status_code == 200 and r.headers.get("mcp-session-id")


def test_wrong_content_type_unknown_session_and_get_without_session(open_broker):
    r = post(open_broker.url("everything"), json.dumps(INIT), {"content-type": "text/plain"})
    assert r.status_code == 415
    r = post(open_broker.url("everything"), {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}, {"mcp-session-id": "nope"})
    assert r.status_code == 404 and "send initialize again" in r.json()["error"]["message"]
    import httpx2

    r = httpx2.get(open_broker.url("everything"), headers={"accept": "text/event-stream"})
    assert r.status_code == 405


def test_stateless_request_whose_headers_disagree_with_the_body_is_refused(open_broker):
    call = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": "delete_bucket", "arguments": {"bucket": "prod"}, "_meta": {"io.modelcontextprotocol/protocolVersion": "2026-07-28"}},
    }
    headers = {"mcp-protocol-version": "2026-07-28", "mcp-method": "tools/call", "mcp-name": "echo"}
    r = post(open_broker.url("py"), call, headers)
    assert r.status_code == 400
    code, msg = error_of(r)
    assert code == -32020 and "'echo' does not match body value 'delete_bucket'" in msg
    del headers["mcp-name"]
    r = post(open_broker.url("py"), call, headers)
    assert r.status_code == 400 and "Mcp-Name header is missing" in r.text


def test_dead_upstreams_give_clear_errors(broker):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    b = broker(
        f"""
        [broker]
        auth = "none"
        [[server]]
        name = "missing"
        command = ["/nonexistent/mcp-server"]
        [[server]]
        name = "gone"
        url = "http://127.0.0.1:{closed_port}/mcp"
        """
    )
    r = post(b.url("missing"), INIT, timeout=15)
    code, msg = error_of(r)
    assert code == -32010 and "cannot start" in msg and "/nonexistent/mcp-server" in msg
    r = post(b.url("gone"), INIT, timeout=15)
    assert r.status_code == 502
    code, msg = error_of(r)
    assert code == -32010 and 'upstream "gone" is unreachable' in msg


def test_hanging_upstreams_time_out_with_a_clear_error(broker):
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)
    conns = []
    stop = threading.Event()

    def accept():
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                conns.append(silent.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        b = broker(
            f"""
            [broker]
            auth = "none"
            upstream_timeout = "1s"
            [[server]]
            name = "mute"
            command = ["python3", "-c", "import time; time.sleep(60)"]
            [[server]]
            name = "silent"
            url = "http://127.0.0.1:{silent.getsockname()[1]}/mcp"
            """
        )
        r = post(b.url("mute"), INIT, timeout=15)
        text = r.text
        assert "did not answer within 1s" in text, text
        r = post(b.url("silent"), INIT, timeout=15)
        assert r.status_code == 504
        assert 'upstream "silent" did not answer within 1s' in r.json()["error"]["message"]
    finally:
        stop.set()
        t.join()
        silent.close()
        for c in conns:
            c.close()


def test_check_reports_every_problem_with_line_and_column(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        '[broker]\nauth = "none"\n[[server]]\nname = "github"\ncommand = ["x"]\n'
        '[[rule]]\ntools = ["gihub/create_issue"]\naction = "allow"\n'
        '[[rule]]\ntools = ["github/x"]\nwhen = { arg = "/q", matches = "(" }\naction = "deny"\n'
    )
    out = subprocess.run([str(BROKER_BIN), "check", "--config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2
    assert f'{cfg}:7:10: rule 1 uses unknown server "gihub" (known: github)' in out.stderr
    assert f"{cfg}:11:8: rule 2: bad regex" in out.stderr
    assert "hint:" in out.stderr
    good = tmp_path / "good.toml"
    good.write_text('[broker]\nauth = "none"\n[[server]]\nname = "fs"\ncommand = ["x"]\n')
    out = subprocess.run([str(BROKER_BIN), "check", "--config", str(good)], capture_output=True, text=True)
    assert out.returncode == 0 and "OK" in out.stdout


def test_the_broker_survives_all_of_it(open_broker):
    async def run():
        async with Client(open_broker.url("everything")) as c:
            return await c.call_tool("echo", {"message": "still here"})

    assert anyio.run(run).content[0].text == "Echo: still here"
