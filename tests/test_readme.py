"""The docs match the code: every ``mcobserve ...`` command line in README.md and docs/ parses, and the
README's lab example runs word for word in a lab of its own."""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcobserve.cli.main import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "bench" / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^\s*```(\w*)\s*$")


def _blocks(text: str) -> list[tuple[int, str, list[str]]]:
    """(line number, language, lines) of every fenced block."""
    out: list[tuple[int, str, list[str]]] = []
    current: list[str] | None = None
    lang, start = "", 0
    for no, line in enumerate(text.splitlines(), start=1):
        m = FENCE.match(line)
        if m and current is None:
            current, lang, start = [], m.group(1), no
        elif m and current is not None:
            out.append((start, lang, current))
            current = None
        elif current is not None:
            current.append(line)
    return out


def _commands(lines: list[str]) -> list[str]:
    """Shell lines joined at a trailing backslash, the ones that run mcobserve (also via lab exec)."""
    joined: list[str] = []
    buf = ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        joined.append(buf + line)
        buf = ""
    return [c.strip() for c in joined if re.match(r"^\s*(MCOBSERVE_LAB=\S+ )?mcobserve\b", c)]


def _argv_lists(command: str) -> list[list[str]]:
    """The mcobserve argument lists of one shell line (a pipe may hold two)."""
    words = shlex.split(command, comments=True)
    lists: list[list[str]] = []
    current: list[str] = []
    for w in [*words, "|"]:
        if w in ("|", "&", "&&", ";"):
            if current and current[0] == "mcobserve":
                lists.append(current[1:])
            current = []
        elif not (not current and "=" in w):  # leading VAR=value
            current.append(w)
    inner = []
    for argv in lists:  # lab exec HOST -- mcobserve ...: the inner command too
        if argv[:2] == ["lab", "exec"] and "--" in argv:
            rest = argv[argv.index("--") + 1 :]
            if rest and rest[0] == "mcobserve":
                inner.append(rest[1:])
    return lists + inner


def _doc_commands() -> list[tuple[str, list[str]]]:
    found = []
    for path in DOCS:
        for start, lang, lines in _blocks(path.read_text()):
            if lang not in ("", "bash", "sh", "console"):
                continue
            for cmd in _commands(lines):
                for argv in _argv_lists(cmd):
                    found.append((f"{path.relative_to(ROOT)}:{start}: mcobserve {shlex.join(argv)}", argv))
    return found


COMMANDS = _doc_commands()


def test_the_docs_have_commands():
    assert len(COMMANDS) >= 20
    subcommands = {argv[0] for _, argv in COMMANDS}
    assert {"server", "observe", "publish", "lab", "bench", "simulate-counting", "credentials"} <= subcommands


@pytest.mark.parametrize("argv", [a for _, a in COMMANDS], ids=[w for w, _ in COMMANDS])
def test_every_documented_command_line_parses(argv):
    args = build_parser().parse_args(argv)
    assert callable(args.func)


def test_inline_commands_name_real_subcommands():
    """`mcobserve X ...` in running text names a real subcommand."""
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for path in DOCS:
        for m in re.finditer(r"`mcobserve ([a-z][a-z-]*)", path.read_text()):
            assert m.group(1) in sub.choices, f"{path.name}: `mcobserve {m.group(1)}` is no subcommand"


def _lab_example() -> str:
    text = (ROOT / "README.md").read_text()
    marker = text.index("<!-- lab-example")
    _start, _lang, lines = _blocks(text[marker:])[0]
    return "\n".join(lines) + "\n"


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_readme_lab_example_runs_word_for_word(tmp_path):
    script = _lab_example()
    assert script.startswith("mcobserve lab up") and script.splitlines()[-1].startswith("mcobserve lab down")
    name = f"rd{os.getpid() % 100000}"
    env = dict(os.environ, MCOBSERVE_LAB=name)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    try:
        res = subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, timeout=75, env=env, cwd=tmp_path
        )
    finally:
        subprocess.run([sys.executable, "-m", "mcobserve.cli.main", "lab", "--name", name, "down"],
                       capture_output=True, timeout=30)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr and "WARNING" not in res.stderr, res.stderr
    out = res.stdout.splitlines()
    text_lines = [x for x in out if x.startswith("2.05 observe=")]
    json_lines = [json.loads(x) for x in out if x.startswith("{") and '"via"' in x]
    # each observer: its informative response's last_notif, then multicast notifications until 3
    assert [x.split("via=")[1].split(":")[0] for x in text_lines] == ["last_notif"] + ["multicast"] * 2, out
    assert [n["via"] for n in json_lines] == ["last_notif"] + ["multicast"] * 2, out
    walk = {f"{21.0 + 2.5 * math.sin(i / 3):.1f} C" for i in range(4)}  # what `publish` sends
    assert {x.split(": ", 1)[1] for x in text_lines[1:]} <= walk
    assert {n["payload"] for n in json_lines[1:]} <= walk
    assert text_lines[0].endswith(" C") and json_lines[0]["payload"].endswith(" C")
    assert len({n["token"] for n in json_lines}) == 1
    assert any(x.startswith("cancelled") for x in out)  # lab down stopped the server: it cancelled
    assert f"lab '{name}' removed" in res.stdout
    assert not any(n.startswith(f"{name}-") for n in os.listdir("/run/netns"))


@pytest.mark.netns
@pytest.mark.timeout(90)
def test_lab_up_ipv4_prints_commands_that_work():
    """`mcobserve lab up --ipv4` prints server, observe and publish commands; they run as printed."""
    name = f"v4{os.getpid() % 100000}"
    env = dict(os.environ, MCOBSERVE_LAB=name)
    env["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), env.get("PATH", "")))
    mco = [sys.executable, "-m", "mcobserve.cli.main"]
    try:
        up = subprocess.run([*mco, "lab", "up", "--observers", "1", "--ipv4"], capture_output=True,
                            text=True, timeout=60, env=env)  # fmt: skip
        assert up.returncode == 0, up.stderr
        prefix = f"MCOBSERVE_LAB={name} "
        cmds = [line.strip() for line in up.stdout.splitlines() if line.strip().startswith(prefix)]
        server_cmd, observe_cmd, publish_cmd = cmds[:3]
        assert "--bind 10.77.0.1:5683 --group 239.255.0.23:61616" in server_cmd
        srv = subprocess.Popen(["bash", "-c", f"{server_cmd} --json"], stdout=subprocess.PIPE,
                               text=True, env=env)  # fmt: skip
        try:
            assert srv.stdout is not None and '"started"' in srv.stdout.readline()
            obs = subprocess.Popen(
                ["bash", "-c", f"{observe_cmd} --count 3 --timeout 30"],
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
            )  # fmt: skip
            time.sleep(2)
            pub = subprocess.run(["bash", "-c", publish_cmd.replace("--count 10", "--count 2")],
                                 capture_output=True, text=True, timeout=30, env=env)  # fmt: skip
            assert pub.returncode == 0, pub.stderr
            out, err = obs.communicate(timeout=40)
        finally:
            srv.terminate()
            srv.wait(10)
    finally:
        down = subprocess.run([*mco, "lab", "down"], capture_output=True, text=True, timeout=30, env=env)
    assert obs.returncode == 0, err
    assert [line.split("via=")[1].split(":")[0] for line in out.splitlines()] == [
        "last_notif", "multicast", "multicast"]  # fmt: skip
    assert f"lab '{name}' removed" in down.stdout
