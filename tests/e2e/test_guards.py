"""Guards before humans: the DLP guard finds secrets in tool arguments and, per rule, refuses
the call, forwards it with the secrets replaced, or holds it for a person who sees them masked;
the secret never reaches the broker's log, its store or the console."""

from __future__ import annotations

from pathlib import Path

from conftest import everything_stdio_command, sdk_burst, sdk_call, toml_list

SECRET = "AKIAIOSFODNN7EXAMPLE"
GH = "ghp_16C7e42F292c6912E7710c838347Ae178B4a"


def config() -> str:
    return f"""
    [broker]
    keepalive = "300ms"
    [dlp]
    action = "deny"
    [[dlp.detector]]
    name = "internal_token"
    regex = 'itk_[a-z0-9]{{16}}'
    [policy]
    default = "allow"
    [[server]]
    name = "everything"
    command = {toml_list(everything_stdio_command())}
    [[rule]]
    name = "sums-redact"
    tools = ["everything/get-sum"]
    action = "allow"
    [[rule]]
    name = "echo-redacts"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^redact" }}
    action = "allow"
    dlp = "redact"
    [[rule]]
    name = "review-redacts-and-asks"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^review" }}
    action = "approve"
    dlp = "redact"
    [[rule]]
    name = "echo-asks"
    tools = ["everything/echo"]
    when = {{ arg = "/message", matches = "^ask" }}
    action = "allow"
    dlp = "approve"
    """


def test_dlp_denies_redacts_or_holds_and_the_secret_goes_nowhere(broker):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("everything")

    denied = sdk_call(url, agent, "echo", {"message": f"deploy with key {SECRET}"}).result(30)
    assert denied.is_error is True
    text = denied.content[0].text
    assert "contain secrets" in text and "aws_access_key at /message (AKIA…MPLE (20 chars))" in text
    assert SECRET not in text

    custom = sdk_call(url, agent, "echo", {"message": "token itk_0123456789abcdef"}).result(30)
    assert custom.is_error is True and "internal_token" in custom.content[0].text

    redacted = sdk_call(url, agent, "echo", {"message": f"redact {GH} now"}).result(30)
    assert redacted.is_error is not True
    assert redacted.content[0].text == "Echo: redact [REDACTED:github_token] now"

    held = sdk_call(url, agent, "echo", {"message": f"ask about {SECRET}", "nested": [{"password": "hunter2"}]})
    pending = alice.pending()
    assert pending["arguments"]["message"] == "ask about [REDACTED:aws_access_key]"
    assert pending["arguments"]["nested"] == [{"password": "[REDACTED:secret_field]"}]
    assert {f["detector"] for f in pending["findings"]} == {"aws_access_key", "secret_field"}
    assert all(SECRET not in f["masked"] and "hunter2" not in f["masked"] for f in pending["findings"])
    alice.decide(pending["id"], "approve")
    # Approved, the upstream gets the arguments as the agent sent them.
    assert held.result(30).content[0].text == f"Echo: ask about {SECRET}"

    clean = sdk_call(url, agent, "get-sum", {"a": 1, "b": 2}).result(30)
    assert clean.is_error is not True

    trail = b.audit()
    blocked = [e for e in trail if e["outcome"] == "blocked"]
    assert len(blocked) == 2 and all("secrets in arguments" in e["reason"] for e in blocked)
    # Nothing secret in the broker's log or anywhere in its data directory (journal, sled).
    log = b.log()
    for secret in (SECRET, GH, "hunter2", "itk_0123456789abcdef"):
        assert secret not in log, secret
        for f in Path(b.data_dir).rglob("*"):
            if f.is_file():
                assert secret.encode() not in f.read_bytes(), (secret, f)


def test_a_redacted_call_let_through_by_an_allow_rule_forwards_the_redacted_arguments(broker):
    b = broker(config())
    agent = b.token("agent", "viewer")
    alice = b.connect(b.token("alice", "approver"))
    url = b.url("everything")
    first = sdk_call(url, agent, "echo", {"message": f"review {GH}"})
    held = alice.pending()
    assert held["arguments"]["message"] == "review [REDACTED:github_token]"
    answer = alice.request(
        {
            "type": "decide",
            "target": {"by": "fingerprint", "fingerprint": held["fingerprint"]},
            "verdict": "approve",
            "allow_next": {"count": 1, "for_ms": 60_000},
        },
        "decided",
    )
    assert answer["rule"]["kind"] == "allow"
    assert first.result(30).content[0].text == "Echo: review [REDACTED:github_token]"
    # The identical call runs without a person, and still only with the secret replaced.
    again = sdk_call(url, agent, "echo", {"message": f"review {GH}"}).result(30)
    assert again.content[0].text == "Echo: review [REDACTED:github_token]"
    assert GH not in b.log()


def test_rate_limits_refuse_at_once_with_a_retry_time_and_hold_under_concurrency(broker):
    b = broker(
        f"""
        [policy]
        default = "allow"
        [[server]]
        name = "everything"
        command = {toml_list(everything_stdio_command())}
        [[limit]]
        name = "sums"
        tools = ["everything/get-sum"]
        per_client = "3/min"
        """
    )
    a = b.token("agent-a", "viewer")
    other = b.token("agent-b", "viewer")
    url = b.url("everything")

    def burst(token: str, n: int):
        return sdk_burst(url, token, [("get-sum", {"a": i, "b": 1}) for i in range(n)])

    got = burst(a, 8)
    ok = [r for r in got if r.is_error is not True]
    refused = [r for r in got if r.is_error is True]
    assert len(ok) == 3 and len(refused) == 5, [r.content[0].text for r in got]
    assert all('rate limit "sums" (3/min per client) is exhausted. Retry in' in r.content[0].text for r in refused)
    # Another client has its own bucket; echo is not limited.
    assert all(r.is_error is not True for r in burst(other, 3))
    assert sdk_call(url, a, "echo", {"message": "not limited"}).result(30).is_error is not True

    limited = b.audit("--status", "rate_limited")
    assert len(limited) == 5 and all(e["client"] == "agent-a" for e in limited)
    assert all("retry in" in e["reason"] for e in limited)
