"""Shared pytest setup.

* Tests marked ``netns`` (and every test using the ``lan``/``onehost`` fixtures) need root and working
  network namespaces. If that is missing: under ``CI=true`` the test FAILS with the reason, elsewhere it
  is skipped with the reason.
* External tools (tshark, text2pcap, coap-client-notls, nft): same rule, via the ``tools`` fixture.
* Under ``CI=true`` any skipped test turns the session into a failure (a skip must not hide a gap).
* Stale namespaces of earlier crashed runs (``mco-<dead pid>-...``) are removed at session start.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

if importlib.util.find_spec("mcobserve") is None:  # not installed (e.g. a bare venv): use the checkout
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mcobserve import netlab

IN_CI = os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}
TOOLS = ("tshark", "text2pcap", "coap-client-notls", "nft", "ip")
LAB_FIXTURES = {"lan", "onehost"}

_netns_status: tuple[bool, str] | None = None


def netns_status() -> tuple[bool, str]:
    """``netlab.can_use_netns()``, computed once per session."""
    global _netns_status
    if _netns_status is None:
        _netns_status = netlab.can_use_netns()
    return _netns_status


def unavailable(reason: str) -> None:
    """Fail (CI=true) or skip (elsewhere) the current test with ``reason``."""
    if IN_CI:
        pytest.fail(f"CI=true and a requirement is missing: {reason}", pytrace=False)
    pytest.skip(reason)


def require_netns() -> None:
    """Fail/skip unless namespaces can be used here."""
    ok, reason = netns_status()
    if not ok:
        unavailable(f"network namespaces unavailable: {reason}")


def pytest_sessionstart(session: pytest.Session) -> None:
    """Remove namespaces left behind by crashed earlier runs (only ours, only dead pids)."""
    if os.geteuid() == 0:
        try:
            removed = netlab.sweep_stale()
        except Exception as exc:  # a sweep problem must not hide the real tests
            print(f"netlab.sweep_stale() failed: {exc!r}")
        else:
            if removed:
                print(f"removed {len(removed)} stale namespace(s): {' '.join(removed)}")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark every test that uses a lab fixture as ``netns``."""
    for item in items:
        if LAB_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.netns)


@pytest.fixture(autouse=True)
def _netns_guard(request: pytest.FixtureRequest) -> None:
    """Apply the root/namespace requirement to ``netns``-marked tests."""
    if request.node.get_closest_marker("netns") is not None:
        require_netns()


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """Paths of the external tools; fail (CI) or skip if any is missing."""
    found = {t: shutil.which(t) for t in TOOLS}
    missing = [t for t, p in found.items() if p is None]
    if missing:
        unavailable(f"missing tools: {', '.join(missing)} (run scripts/setup.sh as root to install them)")
    return {t: p for t, p in found.items() if p is not None}


@pytest.fixture
def lan() -> Iterator[netlab.Lan]:
    """A bridge LAN: server + 3 clients (fresh namespaces per test, always torn down)."""
    require_netns()
    with netlab.Lan(clients=3) as lab:
        yield lab


@pytest.fixture
def onehost() -> Iterator[netlab.OneHost]:
    """One namespace with the vm0/vm1 veth pair (fresh per test, always torn down)."""
    require_netns()
    with netlab.OneHost() as lab:
        yield lab


def _skipped(config: pytest.Config) -> int:
    """Number of skipped tests reported so far."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return 0
    return len(reporter.stats.get("skipped", []))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Under CI=true, a run with skipped tests fails."""
    if IN_CI and _skipped(session.config) and session.exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int) -> None:
    """Say plainly why a CI run with skips failed."""
    n = len(terminalreporter.stats.get("skipped", []))
    if IN_CI and n:
        terminalreporter.write_line(
            f"CI=true: {n} test(s) were skipped; in CI every skip counts as a failure (exit status 1).",
            red=True,
            bold=True,
        )
