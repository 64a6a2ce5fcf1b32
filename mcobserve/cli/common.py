"""What every subcommand shares: exit codes, the usage error, logging, and errors named in words.

Exit codes (documented in README.md, "Exit codes"):

* 0 success; 1 a runtime error (network, security, the server said no); 2 a timeout (nothing or not
  enough received before ``--timeout``); 3 the server ended the observation; 64 a usage error (bad
  option, configuration or input file, like sysexits' EX_USAGE); 70 an internal error (a bug);
  130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import errno
import logging
import sys
import warnings
from typing import Any

from ..errors import McObserveError

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_TIMEOUT = 2
EXIT_ENDED = 3
EXIT_USAGE = 64
EXIT_SOFTWARE = 70
EXIT_INTERRUPTED = 130


class UsageError(McObserveError):
    """Bad command line, configuration or input file (exit 64)."""


class RuntimeFailure(McObserveError):
    """An error at run time that the user can act on (exit 1); the message says what to do."""


async def until_stopped(run_for: float | None) -> None:
    """Return on SIGINT or SIGTERM, or after ``run_for`` seconds (None: only on a signal)."""
    import asyncio
    import contextlib
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), run_for)


def reason(text: str) -> None:
    """One line ``mcobserve: TEXT`` on stderr."""
    print(f"mcobserve: {text}", file=sys.stderr, flush=True)


#: Loggers of third-party libraries: quiet (ERROR) by default, shown from ``-v`` on.
_THIRD_PARTY = ("coap", "aiocoap", "asyncio", "pyroute2", "matplotlib", "PIL")


def configure_logging(verbose: int) -> None:
    """Our warnings by default; INFO with -v (and third-party warnings); DEBUG with -vv.

    aiocoap logs under ``coap`` and ``coap-server``; its warnings about situations mcobserve handles
    itself would otherwise reach users of a working setup.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    third = level if verbose else logging.ERROR
    for name in logging.root.manager.loggerDict:
        if name.split(".")[0].split("-")[0] in _THIRD_PARTY:
            logging.getLogger(name).setLevel(third)
    for name in _THIRD_PARTY:
        logging.getLogger(name).setLevel(third)
    logging.getLogger("coap-server").setLevel(third)
    if not verbose:
        warnings.filterwarnings("ignore", module="aiocoap")
        warnings.filterwarnings("ignore", category=DeprecationWarning)


_ERRNO_WORDS = {
    errno.ECONNREFUSED: "port closed (the host answered 'port unreachable': is the server running, on "
    "that port?)",
    errno.EHOSTUNREACH: "no route to the host (is the address right, and the host up on this link?)",
    errno.ENETUNREACH: "no route to the network (no interface or route for that address family; "
    "check the address and `ip route`)",
    errno.EADDRNOTAVAIL: "address not available here (bind an address this host has: `ip addr`)",
    errno.EADDRINUSE: "address already in use (another process serves that port; stop it or pick "
    "another port)",
    errno.EACCES: "permission denied (ports below 1024 and raw sockets need root)",
    errno.EPERM: "operation not permitted (needs root or CAP_NET_ADMIN)",
    errno.ENODEV: "no such interface (list them with `ip link`)",
    errno.ENOENT: "no such file",
    errno.EISDIR: "a folder, not a file",
}


def describe_os_error(e: OSError, name: bool = True) -> str:
    """An OSError in words: what happened and what to do (``name``: starting with the file name)."""
    words = _ERRNO_WORDS.get(e.errno or 0)
    where = f"{e.filename}: " if e.filename and name else ""
    if words:
        return f"{where}{words}"
    return f"{where}{e.strerror or e}"


def describe_network_error(e: BaseException, target: str, waited: float | None = None) -> str:
    """An aiocoap or socket error while talking to ``target``, in words (as aiocoap-client's hints)."""
    cause: Any = e
    for _ in range(5):  # aiocoap wraps the socket error as __cause__
        if isinstance(cause, OSError) and cause.errno:
            return f"{target}: {describe_os_error(cause)}"
        if cause.__cause__ is None:
            break
        cause = cause.__cause__
    name = type(e).__name__
    if name in ("ConRetransmitsExceeded", "RequestTimedOut", "TimeoutError"):
        after = f" after {waited:.0f} s" if waited else ""
        return (
            f"{target}: no answer{after} (the host may be down, or a firewall drops CoAP; "
            "check the address and port)"
        )
    if name == "ResolutionError":
        return f"{target}: the host name does not resolve ({e}); use an address or a known name"
    if name == "MissingRemoteError" or name == "NoRequestInterface":
        return f"{target}: not a coap:// URI this client can reach (use coap://HOST[:PORT]/PATH)"
    if name == "LibraryShutdown":
        return f"{target}: the client was shut down"
    if name == "NotAProtectedMessage":
        return (
            f"{target}: the server answered without OSCORE (it does not use --credentials; drop "
            "--credentials here or start the server with them)"
        )
    text = str(e).strip()
    if name == "NetworkError" and text in ("", "Network error: NetworkError"):
        return (
            f"{target}: network error without details from aiocoap (check that the address is reachable "
            "from here: `ip route get ADDRESS`; -v shows aiocoap's log)"
        )
    if not text or text == name:
        return f"{target}: {name}"
    return f"{target}: {text}"
