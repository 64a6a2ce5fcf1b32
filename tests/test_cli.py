"""Command line pieces that need no network: inspect, TOML configuration, usage errors."""

from __future__ import annotations

import argparse

import pytest

from mcobserve.cli.main import _load_config, _merge, main
from mcobserve.engine.common import Endpoint
from mcobserve.wire import CRI, InformativeResponse, TpInfo

TP = TpInfo(
    CRI(-1, Endpoint.parse("[2001:db8::ab]").host),
    CRI(-1, Endpoint.parse("[ff35:30:2001:db8::23]").host, 61616),
    b"\x7b",
)
PAYLOAD = InformativeResponse(
    tp_info=TP, last_notif=bytes.fromhex("45610b") + b"\xff5678", ending=2051251201
).encode()


def test_inspect_prints_edn_with_parameter_names(capsys):
    assert main(["inspect", PAYLOAD.hex()]) == 0
    out = capsys.readouterr().out
    assert "/ tp_info / 0:" in out and "/ last_notif / 2:" in out and "/ ending / 4:" in out
    assert "h'20010db80000000000000000000000ab'" in out and "61616" in out and "h'7b'" in out
    assert "coap://[2001:db8::ab]" in out and "coap://[ff35:30:2001:db8::23]:61616" in out
    assert "2.05" in out and "Observe" in out  # last_notif summarized as a CoAP message


def test_inspect_accepts_spaces_prefix_and_stdin(capsys, monkeypatch):
    spaced = "0x" + " ".join(PAYLOAD.hex()[i : i + 2] for i in range(0, len(PAYLOAD.hex()), 2))
    assert main(["inspect", spaced]) == 0
    first = capsys.readouterr().out
    monkeypatch.setattr("sys.stdin", __import__("io").StringIO(PAYLOAD.hex() + "\n"))
    assert main(["inspect", "-"]) == 0
    assert capsys.readouterr().out == first


@pytest.mark.parametrize(("arg", "msg"), [("zz", "not hexadecimal"), ("ff00", "not an informative-response")])
def test_inspect_rejects_bad_input_in_one_line(capsys, arg, msg):
    assert main(["inspect", arg]) == 64
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_config_file_fills_unset_options(tmp_path):
    cfg = tmp_path / "mc.toml"
    cfg.write_text(
        '[server]\nbind = "[fd00:db8::1]:5683"\ngroup = "[ff35:30:2001:db8::23]:61616"\n'
        'resource = ["a=1", "b"]\ngroup-after = 3\nmin_interval = 0.5\njson = true\n'
        "[code_points]\ncontent_format = 65001\n"
    )
    args = argparse.Namespace(
        bind=None,
        group="[ff05::1]:5683",
        resource=[],
        group_after=None,
        json=None,
        min_interval=None,
        content_format=None,
    )
    _merge(
        args,
        _load_config(str(cfg), "server"),
        {
            "bind": None,
            "group": None,
            "resource": [],
            "group_after": 1,
            "min_interval": 3.0,
            "json": False,
            "content_format": 65000,
        },
    )
    assert args.bind == "[fd00:db8::1]:5683"
    assert args.group == "[ff05::1]:5683"  # the command line wins
    assert args.resource == ["a=1", "b"] and args.group_after == 3 and args.min_interval == 0.5
    assert args.json is True and args.content_format == 65001


def test_config_errors_are_usage_errors(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text('[server]\nbindd = "x"\n')
    assert main(["server", "--config", str(bad)]) == 64
    assert "unknown setting 'bindd'" in capsys.readouterr().err
    broken = tmp_path / "broken.toml"
    broken.write_text("[server\n")
    assert main(["server", "--config", str(broken)]) == 64
    assert main(["server", "--config", str(tmp_path / "missing.toml")]) == 64


@pytest.mark.parametrize(
    ("argv", "msg"),
    [
        (["server", "--resource", "r"], "--bind and --group are required"),
        (["server", "--bind", "[::1]", "--group", "[ff05::1]:61616"], "at least one --resource"),
        (
            ["server", "--bind", "[::1]", "--group", "[2001:db8::1]:61616", "--resource", "r"],
            "not a multicast",
        ),
        (
            ["server", "--bind", "[::1]", "--group", "[ff05::1]", "--resource", "r", "--group-after", "0"],
            "group_after",
        ),
        (["server", "--bind", "[::1", "--group", "[ff05::1]", "--resource", "r"], "unterminated"),
        (["observe"], "give the URI"),
        (["observe", "coap://[::1]/r", "--count", "0"], "--count must be at least 1"),
    ],
)
def test_usage_errors(argv, msg, capsys):
    assert main(argv) == 64
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1
