"""Decisions signed by the approver's own SSH key (SSHSIG), checked by the broker before it
applies them, kept in the audit trail, re-verified by `audit verify` against the keys valid at
the time, and exported for `ssh-keygen -Y verify`, so the trail proves who decided what without
trusting the broker.

Keys are made by `ssh-keygen` in the test; the agent path uses a real `ssh-agent`; the calls
come from the official Python SDK; forged and replayed signatures are made with `ssh-keygen -Y
sign` and sent over a real console WebSocket.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import subprocess
import time
from pathlib import Path

from conftest import broker_cli, console_cli, everything_stdio_command, sdk_burst, sdk_call, toml_list

NAMESPACE = "tollgate-decision@v1"


def config(extra: str = "") -> str:
    return f"""
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "echo-needs-a-human"
    tools = ["everything/echo"]
    action = "approve"
    {extra}
    """


def keygen(path: Path, kind: str = "ed25519") -> Path:
    out = subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-C", path.name, "-f", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return path


def add_identity(b, name: str, role: str, *args: str) -> str:
    out = broker_cli("token", "add", "--data-dir", str(b.data_dir), "--name", name, "--role", role, *args)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def fingerprint(pub: Path) -> str:
    out = subprocess.run(["ssh-keygen", "-l", "-f", str(pub)], capture_output=True, text=True, check=True)
    return out.stdout.split()[1]


def ssh_sign(key: Path, text: str, tmp: Path) -> str:
    """Sign `text` with `ssh-keygen -Y sign`, as a third party would."""
    msg = tmp / f"msg-{time.monotonic_ns()}"
    msg.write_text(text)
    out = subprocess.run(["ssh-keygen", "-Y", "sign", "-f", str(key), "-n", NAMESPACE, str(msg)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return Path(str(msg) + ".sig").read_text()


def statement(approver: str, decision: str, calls: list[dict], reason: str | None = None, fingerprint: str | None = None, temp_rule=None, at_ms: int | None = None) -> str:
    """The statement text, field for field as `tollgate_shared::signing::Statement` writes it."""
    s = {"v": 1, "approver": approver, "decision": decision}
    if reason:
        s["reason"] = reason
    if fingerprint:
        s["fingerprint"] = fingerprint
    if temp_rule:
        s["temp_rule"] = temp_rule
    s["at_ms"] = at_ms if at_ms is not None else int(time.time() * 1000)
    s["calls"] = sorted(
        (
            {"id": c["id"], "server": c["server"], "tool": c["tool"], "args_hash": c["args_hash"], "policy_version": c["policy_version"], "rule": c["rule"]["name"]}
            for c in calls
        ),
        key=lambda c: c["id"],
    )
    return json.dumps(s, separators=(",", ":"))


def signed_decide(console, ids, verdict: str, text: str, sig: str, expect: str = "error") -> dict:
    """Send a signed decision; the answer of type `expect` (`error` or `decided`)."""
    msg = {"type": "decide", "target": {"by": "ids", "ids": ids}, "verdict": verdict, "signed": {"statement": text, "signature": sig}}
    req = console.send(msg)
    return console.next(expect, where=lambda m: m.get("req") == req)


def test_a_decision_signed_in_the_console_is_applied_audited_verified_and_checkable_with_ssh_keygen(broker, tmp_path):
    b = broker(config())
    key = keygen(tmp_path / "alice")
    ecdsa = keygen(tmp_path / "alice-ecdsa", "ecdsa")
    agent = add_identity(b, "agent", "viewer")
    alice = add_identity(b, "alice", "approver", "--ssh-key-file", f"{key}.pub", "--ssh-key-file", f"{ecdsa}.pub", "--require-signature")
    listed = broker_cli("token", "list", "--data-dir", str(b.data_dir))
    assert fingerprint(Path(f"{key}.pub")) in listed.stdout and "decisions must be signed" in listed.stdout, listed.stdout
    watch = b.connect(alice)

    first = sdk_call(b.url("everything"), agent, "echo", {"message": "deploy v2"})
    call = watch.pending()
    # Unsigned: refused, saying why and how to sign; nothing is decided.
    out = console_cli(b, alice, "approve", call["id"])
    assert out.returncode == 1, out
    assert "must be signed" in out.stderr and "SSH" in out.stderr, out.stderr
    assert not first.done()
    # Signed with the key file: applied, and the client runs the call.
    out = console_cli(b, alice, "--sign", str(key), "approve", call["id"])
    assert out.returncode == 0, out.stderr
    assert first.result(30).content[0].text == "Echo: deploy v2"

    # Through a real ssh-agent holding both keys, with the ECDSA P-256 one: a rejection.
    agent_env = dict(os.environ)
    started = subprocess.run(["ssh-agent", "-s"], capture_output=True, text=True, check=True)
    for part in started.stdout.replace("\n", ";").split(";"):
        if "=" in part and part.strip().split("=")[0] in ("SSH_AUTH_SOCK", "SSH_AGENT_PID"):
            k, v = part.strip().split("=", 1)
            agent_env[k] = v
    try:
        for k in (key, ecdsa):
            subprocess.run(["ssh-add", str(k)], env=agent_env, capture_output=True, check=True)
        second = sdk_call(b.url("everything"), agent, "echo", {"message": "drop table"})
        call2 = watch.pending()
        env = {**agent_env, "TOLLGATE_URL": b.console, "TOLLGATE_TOKEN": alice, "XDG_CONFIG_HOME": "/nonexistent"}
        from conftest import CONSOLE_BIN

        out = subprocess.run([str(CONSOLE_BIN), "--sign", f"agent:{ecdsa}.pub", "reject", call2["id"], "--reason", "not today"], capture_output=True, text=True, env=env, timeout=30)
        assert out.returncode == 0, out.stderr
        got = second.result(30)
        assert got.is_error and "not today" in got.content[0].text
    finally:
        subprocess.run(["kill", agent_env.get("SSH_AGENT_PID", "0")], capture_output=True)

    # The trail carries both signatures; `audit verify` checks them against alice's keys.
    trail = b.audit("--tool", "echo")
    decided = [e for e in trail if e["outcome"] in ("approved", "rejected")]
    assert [e["signatures"][0]["key"] for e in decided] == [fingerprint(Path(f"{key}.pub")), fingerprint(Path(f"{ecdsa}.pub"))], decided
    v = broker_cli("audit", "verify", "--data-dir", str(b.data_dir))
    assert v.returncode == 0, v.stderr
    assert "signed decisions: 2 verified" in v.stderr, v.stderr

    # Exported, each statement verifies with OpenSSH alone.
    out_dir = tmp_path / "export"
    e = broker_cli("audit", "export", "--signed", "--out", str(out_dir), "--data-dir", str(b.data_dir))
    assert e.returncode == 0, e.stderr
    assert "exported 2 signed decisions" in e.stdout
    check = subprocess.run(["sh", "verify.sh"], cwd=out_dir, capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.count("Good \"tollgate-decision@v1\" signature for alice") == 2, check.stdout
    index = [json.loads(line) for line in (out_dir / "index.jsonl").read_text().splitlines()]
    assert {i["decision"] for i in index} == {"approve", "reject"}


def test_bad_signatures_are_refused_with_the_reason(broker, tmp_path):
    b = broker(config())
    key = keygen(tmp_path / "alice")
    other = keygen(tmp_path / "mallory")
    agent = add_identity(b, "agent", "viewer")
    alice = add_identity(b, "alice", "approver", "--ssh-key-file", f"{key}.pub")
    con = b.connect(alice)
    url = b.url("everything")
    futures = [sdk_call(url, agent, "echo", {"message": m}) for m in ("one", "two")]
    calls = {c["arguments"]["message"]: c for c in (con.pending(), con.pending())}
    one, two = calls["one"], calls["two"]

    def refused(answer, why):
        assert answer["type"] == "error" and answer.get("refusal") == "signature", answer
        assert why in answer["message"], answer["message"]

    # A key that is not alice's.
    text = statement("alice", "approve", [one])
    refused(signed_decide(con, [one["id"]], "approve", text, ssh_sign(other, text, tmp_path)), "not one of the signer's keys")
    # A signature over other arguments.
    forged = dict(one, args_hash="0" * 64)
    text = statement("alice", "approve", [forged])
    refused(signed_decide(con, [one["id"]], "approve", text, ssh_sign(key, text, tmp_path)), "the signature covers arguments with hash")
    # A signature for another call id, replayed for this one.
    text = statement("alice", "approve", [two])
    refused(signed_decide(con, [one["id"]], "approve", text, ssh_sign(key, text, tmp_path)), "names other calls")
    # A statement that says reject, sent as an approval; a stale one.
    text = statement("alice", "reject", [one])
    refused(signed_decide(con, [one["id"]], "approve", text, ssh_sign(key, text, tmp_path)), "signs a decision to reject")
    text = statement("alice", "approve", [one], at_ms=int(time.time() * 1000) - 3_600_000)
    refused(signed_decide(con, [one["id"]], "approve", text, ssh_sign(key, text, tmp_path)), "more than 5 min")
    assert not any(f.done() for f in futures), "nothing was decided"

    # A good one decides exactly call one; replaying it for call two is refused.
    text = statement("alice", "approve", [one])
    sig = ssh_sign(key, text, tmp_path)
    answer = signed_decide(con, [one["id"]], "approve", text, sig, expect="decided")
    assert answer["type"] == "decided" and answer["results"][0]["ok"], answer
    assert futures[0].result(30).content[0].text == "Echo: one"
    refused(signed_decide(con, [two["id"]], "approve", text, sig), "names other calls")

    # A revoked key: refused from now on.
    out = broker_cli("token", "key", "revoke", "--data-dir", str(b.data_dir), "--name", "alice", "--key", fingerprint(Path(f"{key}.pub")))
    assert out.returncode == 0, out.stderr
    time.sleep(1.5)  # the broker re-reads the token file each second
    text = statement("alice", "approve", [two])
    refused(signed_decide(con, [two["id"]], "approve", text, ssh_sign(key, text, tmp_path)), "has no SSH key registered")
    assert con.decide(two["id"], "reject", "cleanup")[0]["ok"]
    futures[1].result(30)

    # What alice signed before the revocation still verifies.
    v = broker_cli("audit", "verify", "--data-dir", str(b.data_dir)) if b.proc.stop() == 0 else None
    assert v is not None and v.returncode == 0, v.stderr if v else "broker did not stop cleanly"
    assert "signed decisions: 1 verified" in v.stderr, v.stderr


def test_a_500_call_pattern_is_rejected_with_one_signature(broker, tmp_path):
    b = broker(config('[loops]\nthreshold = 1000\nwindow = "5m"'))
    key = keygen(tmp_path / "alice")
    agent = add_identity(b, "agent", "viewer")
    alice = add_identity(b, "alice", "approver", "--ssh-key-file", f"{key}.pub", "--require-signature")
    con = b.connect(alice)
    pool = concurrent.futures.ThreadPoolExecutor(1)
    loop = pool.submit(sdk_burst, b.url("everything"), agent, [("echo", {"message": "again"})] * 500)
    deadline = time.monotonic() + 120
    while True:
        pending = con.request({"type": "snapshot"}, "snapshot")["pending"]
        if len(pending) == 500:
            break
        assert time.monotonic() < deadline, len(pending)
        time.sleep(0.3)
    fp = pending[0]["fingerprint"]
    out = console_cli(b, alice, "--sign", str(key), "reject", "--fingerprint", fp, "--reason", "runaway", "--json", timeout=120)
    assert out.returncode == 0, out.stderr
    results = json.loads(out.stdout)
    assert len(results) == 500 and all(r["ok"] for r in results), out.stdout[:500]
    answers = loop.result(120)
    assert len(answers) == 500 and all(a.is_error and "runaway" in a.content[0].text for a in answers)

    trail = b.audit("--status", "rejected")
    assert len(trail) == 500
    # One statement for all 500, kept whole once (per batch of the broker's bulk decision),
    # referenced by the others.
    whole = [e for e in trail if e["signatures"][0].get("statement")]
    assert 1 <= len(whole) <= 5 and len({e["signatures"][0]["statement_sha256"] for e in trail}) == 1, len(whole)
    covered = json.loads(whole[0]["signatures"][0]["statement"])["calls"]
    assert len(covered) == 500 and {c["id"] for c in covered} == {e["call_id"] for e in trail}
    v = broker_cli("audit", "verify", "--data-dir", str(b.data_dir))
    assert v.returncode == 0 and "signed decisions: 500 verified" in v.stderr, v.stdout + v.stderr


def test_the_tui_signs_its_decisions_and_says_when_it_cannot(broker, tmp_path):
    from test_console import CONSOLE_BIN, keys, tmux, wait_screen

    b = broker(config())
    key = keygen(tmp_path / "alice")
    agent = add_identity(b, "agent", "viewer")
    alice = add_identity(b, "alice", "approver", "--ssh-key-file", f"{key}.pub", "--require-signature")
    first = sdk_call(b.url("everything"), agent, "echo", {"message": "signed in the tui"})
    b.connect(alice).pending()
    session = f"tollgate-sign-{os.getpid()}"
    try:
        # Without --sign the broker refuses, and the TUI shows why.
        cmd = f"env TOLLGATE_URL={b.console} TOLLGATE_TOKEN={alice} XDG_CONFIG_HOME=/nonexistent {CONSOLE_BIN}"
        tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "30", cmd)
        wait_screen(session, r"1 pending")
        keys(session, "a")
        wait_screen(session, r"must be signed")
        tmux("kill-session", "-t", session)
        # With a key that is not a private key file, it says so and sends nothing.
        tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "30", f"{cmd} --sign {key}.pub")
        wait_screen(session, r"1 pending")
        keys(session, "a")
        wait_screen(session, r"not sent: cannot sign the decision")
        tmux("kill-session", "-t", session)
        # With the key: signed, approved, run.
        tmux("new-session", "-d", "-s", session, "-x", "140", "-y", "30", f"{cmd} --sign {key}")
        wait_screen(session, r"1 pending")
        keys(session, "a")
        wait_screen(session, r"echo approved by alice")
        assert first.result(30).content[0].text == "Echo: signed in the tui"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
    trail = b.audit("--status", "approved")
    assert trail[0]["signatures"][0]["key"] == fingerprint(Path(f"{key}.pub"))


def test_audit_verify_exits_1_naming_a_decision_its_signatures_do_not_prove(broker, tmp_path):
    """The command's side of what `signatures::tests` checks entry by entry: an unsigned "approved
    by alice" in the trail, once alice's decisions must be signed, is listed and fails the run
    (as a forged entry would), while the chain itself still verifies."""
    b = broker(config())
    key = keygen(tmp_path / "alice")
    agent = add_identity(b, "agent", "viewer")
    alice = add_identity(b, "alice", "approver", "--ssh-key-file", f"{key}.pub")
    con = b.connect(alice)
    done = sdk_call(b.url("everything"), agent, "echo", {"message": "unsigned"})
    call = con.pending()
    assert con.decide(call["id"], "approve")[0]["ok"]
    done.result(30)
    assert b.proc.stop() == 0
    v = broker_cli("audit", "verify", "--data-dir", str(b.data_dir))
    assert v.returncode == 0 and "1 decisions by approvers with keys were not signed" in v.stderr, v.stderr
    out = broker_cli("token", "key", "add", "--data-dir", str(b.data_dir), "--name", "alice", "--require-signature")
    assert out.returncode == 0, out.stderr
    v = broker_cli("audit", "verify", "--data-dir", str(b.data_dir))
    assert v.returncode == 1 and "audit chain OK" in v.stdout, v.stdout + v.stderr
    assert f"call {call['id']} is approved by alice without a valid signature, but alice's decisions must be signed" in v.stderr, v.stderr
    assert "1 audit entries claim a decision their signatures do not prove" in v.stderr, v.stderr
