"""Every user error of every subcommand: one line ``mcobserve: ...`` on stderr, no traceback, the
documented exit code (README "Exit codes")."""

from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
from pathlib import Path

import aiocoap.error
import pytest

from mcobserve.cli.main import SUBCOMMAND_MODULES, build_parser, main

USAGE, FAILURE, TIMEOUT = 64, 1, 2
ANY = None  # a non-zero code decided by another module's owner
MCOBSERVE = [sys.executable, "-m", "mcobserve.cli.main"]


def _closed_udp_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("bad")
    (d / "type.toml").write_text(
        '[server]\ngroup_after = "two"\nbind = "127.0.0.1"\ngroup = "239.255.0.1"\nresource = ["t=1"]\n'
    )
    (d / "unknown.toml").write_text('[observe]\nuri = "coap://127.0.0.1/t"\ncolour = "red"\n')
    (d / "broken.toml").write_text("[server\n")
    (d / "flag.toml").write_text('[observe]\nuri = "coap://127.0.0.1/t"\njson = "yes"\n')
    (d / "bad.json").write_text("{\n")
    (d / "list.json").write_text("[1]\n")
    (d / "file").write_text("x")
    return d


PORT = _closed_udp_port()

#: (argv, exit code, words the one line must contain). ``{d}`` is a folder with broken files.
CASES: list[tuple[str, int | None, str]] = [
    ("", USAGE, "required"),
    ("nosuchcommand", USAGE, "invalid choice"),
    # server
    ("server", USAGE, "--bind and --group are required"),
    ("server --bind nonsense --group 239.255.0.1 --resource t", USAGE, "nonsense"),
    ("server --bind [::1] --group 239.255.0.1 --resource t", USAGE, "same IP version"),
    ("server --bind 127.0.0.1 --group 239.255.0.1", USAGE, "--resource"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource /", USAGE, "empty path"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --interface eth9", USAGE, "no interface"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --hops 999", USAGE, "--hops"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --token-length 9", USAGE, "--token-length"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --min-interval -1", USAGE, "min_interval"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --group-after x", USAGE, "invalid int"),
    ("server --config {d}/type.toml", USAGE, "group_after in [server]"),
    ("server --config {d}/broken.toml", USAGE, "not valid TOML"),
    ("server --config {d}/missing.toml", USAGE, "no such file"),
    ("server --config {d}", USAGE, "a folder, not a file"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --content-format -1", USAGE, "0..65535"),
    ("server --bind 127.0.0.1 --group 10.0.0.1 --resource t", USAGE, "not a multicast address"),
    ("server --bind 127.0.0.1:99999 --group 239.255.0.1 --resource t", USAGE, "out of range"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --credentials {d}/bad.json", USAGE, "JSON"),
    ("server --bind 127.0.0.1 --group 239.255.0.1 --resource t --group-oscore self-managed", USAGE, "needs"),
    # observe
    ("observe", USAGE, "give the URI"),
    ("observe http://127.0.0.1/t", USAGE, "coap://"),
    ("observe notauri", USAGE, "no scheme"),
    ("observe coap:///t", USAGE, "no host"),
    ("observe coap://127.0.0.1:99999/t", USAGE, "not a valid URI"),
    ("observe coap://127.0.0.1/t --count 0", USAGE, "--count"),
    ("observe coap://127.0.0.1/t --timeout -1", USAGE, "--timeout"),
    ("observe coap://127.0.0.1/t --timeout nan", USAGE, "--timeout"),
    ("observe coap://127.0.0.1/t --leisure -1", USAGE, "--leisure"),
    ("observe coap://127.0.0.1/t --content-format 99999999", USAGE, "0..65535"),
    ("observe coap://[::1", USAGE, "not a valid URI"),
    ("observe coap://127.0.0.1/t --interface eth9", USAGE, "no interface 'eth9'"),
    ("observe coap://127.0.0.1/t --credentials {d}/missing.json", USAGE, "no such file"),
    ("observe coap://127.0.0.1/t --credentials {d}/list.json", USAGE, "JSON object"),
    ("observe --config {d}/unknown.toml", USAGE, "unknown setting"),
    ("observe --config {d}/flag.toml", USAGE, "true or false"),
    ("observe coap://127.0.0.1/t --group-oscore {d}/missing.toml", USAGE, "missing.toml"),
    (f"observe coap://127.0.0.1:{PORT}/t --timeout 5", FAILURE, "port closed"),
    # inspect
    ("inspect zz", USAGE, "not hexadecimal"),
    ("inspect a1", USAGE, "not an informative-response"),
    # publish
    ("publish", USAGE, "required"),
    ("publish coap://127.0.0.1/t --count 0", USAGE, "--count"),
    ("publish coap://127.0.0.1/t --every -1", USAGE, "--every"),
    ("publish coap://127.0.0.1/t --values ,", USAGE, "--values"),
    ("publish http://127.0.0.1/t", USAGE, "coap://"),
    (f"publish coap://127.0.0.1:{PORT}/t --count 1", FAILURE, "port closed"),
    # demo, simulate-counting, credentials, bench
    ("demo --observers 0", USAGE, "--observers"),
    ("demo --every 0", USAGE, "--every"),
    ("simulate-counting --observers -5 --active 1", USAGE, "--observers"),
    ("simulate-counting --observers 10", USAGE, "--active"),
    ("credentials {d}/c --server [fd00:db8::1] --clients 0", ANY, "clients"),
    ("credentials {d}/c", USAGE, "--server"),
    ("bench --observers abc", USAGE, "--observers"),
    ("bench --modes bogus", USAGE, "unknown mode"),
    ("bench --updates 0", USAGE, "updates"),
    ("bench --out {d}/file", USAGE, "not a folder"),
    # lab
    ("lab", USAGE, "required"),
    ("lab up --observers 0", USAGE, "--observers"),
    ("lab --name BAD! up", USAGE, "lab name"),
    ("lab exec server", USAGE, "give the command"),
    ("lab --name zzqnone exec server -- true", FAILURE, "no lab 'zzqnone' is up"),
    ("lab --name zzqnone status", FAILURE, "mcobserve lab up"),
    # broker, topic, subscribe, proxy
    ("broker", USAGE, "--bind"),
    ("broker --bind [::1]:5683 --group 10.0.0.1", USAGE, "not a multicast address"),
    ("broker --bind [::1] --group-prefix zz/96", USAGE, "--group-prefix"),
    ("broker --bind [::1]:5683 --group [ff02::fd]:5683", USAGE, "link-local"),
    ("broker --bind [::1] --group [ff35::23] --publishers a", USAGE, "--publishers needs --credentials"),
    ("topic", USAGE, "required"),
    ("topic get notauri x", FAILURE, "not a coap:// URI"),
    ("subscribe", USAGE, "required"),
    ("proxy", USAGE, "--bind"),
    ("proxy --bind nothere:70000", USAGE, "out of range"),
    ("proxy --bind [::1] --reverse http://x", USAGE, "not proxied"),
    # dissector, top
    ("dissector", USAGE, "required"),
    ("dissector install --dir {d}/file", USAGE, "not a folder"),
    ("top {d}/missing.jsonl", USAGE, "no such file"),
    ("top {d}", USAGE, "a folder"),
    ("top --socket {d}/none.sock", USAGE, "start the server with --control"),
    ("top {d}/bad.json --socket {d}/none.sock", USAGE, "not both"),
    ("top --interval 0 {d}/bad.json", USAGE, "--interval"),
]


def _argv(line: str, d: Path) -> list[str]:
    return [a.replace("{d}", str(d)) for a in line.split()]


@pytest.mark.parametrize(("line", "code", "words"), CASES, ids=[c[0] or "(none)" for c in CASES])
def test_bad_input_is_one_line_with_documented_exit_code(capsys, files, line, code, words):
    try:
        rc = main(_argv(line, files))
    except SystemExit as e:  # argparse
        rc = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert lines[0].startswith("mcobserve: "), err
    assert words.lower() in lines[0].lower(), err
    if code is ANY:
        assert rc not in (0, None)
    else:
        assert rc == code, err


def test_every_subcommand_has_bad_input_in_the_table():
    """A new subcommand comes with its bad inputs here."""
    covered = {c[0].split()[0] for c in CASES if c[0]}
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    mine = {"server", "observe", "inspect", "publish", "demo", "simulate-counting", "credentials"}
    mine |= {name for name in sub.choices if name in {m.replace("_", "-") for m in SUBCOMMAND_MODULES}}
    assert mine <= covered | {"nosuchcommand"}, mine - covered


def test_no_answer_before_timeout_exits_2_and_says_so():
    """A server that swallows the registration: exit 2 and a reason, never 0 and silence."""
    hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    hole.bind(("127.0.0.1", 0))
    port = hole.getsockname()[1]
    try:
        proc = subprocess.run(
            [*MCOBSERVE, "observe", f"coap://127.0.0.1:{port}/t", "--timeout", "1"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert hole.recv(2048)[1:2] == b"\x01"  # the GET did arrive
    finally:
        hole.close()
    assert proc.returncode == 2, proc
    assert proc.stdout == ""
    assert proc.stderr.startswith("mcobserve: nothing received from") and "within 1 s" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_argparse_error_exits_64_in_a_real_process():
    proc = subprocess.run(
        [*MCOBSERVE, "observe", "--bogus"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.returncode == 64
    assert proc.stderr.strip().splitlines() == [
        "mcobserve: unrecognized arguments: --bogus (see: mcobserve --help)"
    ]


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda: _wrapped(errno.ECONNREFUSED), "coap://h/t: port closed"),
        (lambda: _wrapped(errno.EHOSTUNREACH), "coap://h/t: no route to the host"),
        (lambda: _wrapped(errno.ENETUNREACH), "coap://h/t: no route to the network"),
        (lambda: aiocoap.error.ConRetransmitsExceeded(), "coap://h/t: no answer after 93 s"),
        (lambda: aiocoap.error.ResolutionError("x"), "coap://h/t: the host name does not resolve"),
        (lambda: aiocoap.error.NetworkError(), "coap://h/t: network error without details"),
    ],
)
def test_network_failures_are_named_in_words(make, words):
    from mcobserve.cli.common import describe_network_error

    assert describe_network_error(make(), "coap://h/t", 93.2).startswith(words)


def _wrapped(code: int) -> Exception:
    """What aiocoap raises for a socket error: a NetworkError whose __cause__ is the OSError."""
    try:
        try:
            raise OSError(code, os.strerror(code))
        except OSError as e:
            raise aiocoap.error.NetworkError(str(e)) from e
    except aiocoap.error.NetworkError as outer:
        return outer
