"""tshark helpers: capture inside a lab namespace and decode CoAP into plain dicts.

Field values are strings exactly as ``tshark -T json -e FIELD`` prints them (a field that occurs
several times is joined with ``,``; an absent field is ``None``). Byte fields (``coap.token``,
``udp.payload``, ``coap.opt.unknown``) are lowercase hex without separators. Note that tshark 4.0's
``coap.opt.ctype`` is a *name* ("application/cbor", "Unknown Type 65000"), and that it does not know
option 18 (Feedback-Divider): use :func:`coap_options` on ``udp.payload`` for exact option numbers.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

if TYPE_CHECKING:
    from mcobserve.netlab import Host

DEFAULT_FIELDS: tuple[str, ...] = (
    "frame.number",
    "frame.time_relative",
    "coap.type",
    "coap.code",
    "coap.mid",
    "coap.token",
    "coap.opt.observe",
    "coap.opt.ctype",
    "coap.opt.max_age",
    "coap.opt.name",
    "coap.opt.unknown",
    "coap.opt.object_security_piv",
    "coap.opt.object_security_kid",
    "coap.opt.object_security_kid_context",
    "udp.srcport",
    "udp.dstport",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.hlim",
    "ip.src",
    "ip.dst",
    "ip.ttl",
    "udp.payload",
    "data.data",
)
DEFAULT_DISPLAY_FILTER = "coap && !icmp && !icmpv6"
_CAPTURED_RE = re.compile(r"(\d+) packets? captured")


class CaptureError(RuntimeError):
    """tshark could not start, stop or decode."""


def _clean(stderr: str) -> str:
    """tshark stderr without the "Running as user root" noise."""
    return "\n".join(ln for ln in stderr.strip().splitlines() if not ln.startswith("Running as user"))


class Capture:
    """``with Capture(host, "eth0", "udp port 5683", path):`` runs tshark in ``host``'s namespace.

    ``host=None`` captures in the current namespace (e.g. on ``lo``). Entering returns once tshark
    reports "Capturing on" and dumpcap has really started (its "Capture started." message or the
    file header; tshark prints "Capturing on" even for a missing interface), bounded by
    ``start_timeout``; leaving waits ``settle`` seconds for in-flight packets, sends SIGINT and
    waits (bounded) for tshark to write the file.
    """

    def __init__(
        self,
        host: Host | None,
        iface: str,
        bpf_filter: str,
        path: str | Path,
        *,
        start_timeout: float = 15.0,
        stop_timeout: float = 15.0,
        settle: float = 0.3,
    ) -> None:
        """Describe a capture; nothing runs before :meth:`start`."""
        self.host = host
        self.iface = iface
        self.bpf_filter = bpf_filter
        self.path = Path(path)
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.settle = settle
        self.proc: subprocess.Popen[bytes] | None = None
        self.captured: int | None = None
        self._lines: list[str] = []
        self._started = threading.Event()
        self._reader: threading.Thread | None = None

    @property
    def stderr(self) -> str:
        """tshark's stderr so far."""
        return "".join(self._lines)

    def _argv(self) -> list[str]:
        """tshark command line."""
        return ["tshark", "-i", self.iface, "-f", self.bpf_filter, "-w", str(self.path), "-q"]

    def _read_stderr(self) -> None:
        """Drain stderr (so tshark never blocks on it) and flag the "Capturing on" line."""
        assert self.proc is not None and self.proc.stderr is not None
        for raw in iter(self.proc.stderr.readline, b""):
            line = raw.decode(errors="replace")
            self._lines.append(line)
            if "Capturing on" in line:
                self._started.set()

    def start(self) -> Self:
        """Start tshark and wait until it captures."""
        if shutil.which("tshark") is None:
            raise CaptureError("tshark is not installed (Debian package: tshark)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kw: dict[str, Any] = {"stdin": subprocess.DEVNULL, "stdout": subprocess.DEVNULL}
        kw["stderr"] = subprocess.PIPE
        if self.host is None:
            self.proc = subprocess.Popen(self._argv(), **kw)
        else:
            self.proc = self.host.popen(self._argv(), **kw)
        self._reader = threading.Thread(target=self._read_stderr, name="tshark-stderr", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + self.start_timeout
        while not (self._started.wait(0.02) and self._file_started()):
            if self.proc.poll() is not None:
                self._join_reader()
                raise CaptureError(f"tshark exited ({self.proc.returncode}): {_clean(self.stderr)}")
            if time.monotonic() > deadline:
                self.stop(settle=0.0)
                raise CaptureError(
                    f"tshark did not start within {self.start_timeout} s: {_clean(self.stderr)}"
                )
        return self

    def _file_started(self) -> bool:
        """dumpcap confirmed the capture ("Capture started.") or wrote the file header."""
        if "Capture started" in self.stderr:
            return True
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def _join_reader(self) -> None:
        """Wait (bounded) for the stderr reader to see EOF."""
        if self._reader is not None:
            self._reader.join(timeout=self.stop_timeout)

    def stop(self, settle: float | None = None) -> int | None:
        """Stop tshark (SIGINT, then kill if it hangs); return the packet count it reported."""
        if self.proc is None:
            return self.captured
        if self.proc.poll() is None:
            time.sleep(self.settle if settle is None else settle)
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=self.stop_timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=self.stop_timeout)
        self._join_reader()
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        m = _CAPTURED_RE.search(self.stderr)
        self.captured = int(m.group(1)) if m else None
        return self.captured

    def __enter__(self) -> Self:
        """Start capturing."""
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop capturing (always)."""
        self.stop()

    def decode(self, ports: Iterable[int] = (5683,), **kw: Any) -> list[dict[str, str | None]]:
        """:func:`decode` of this capture's file."""
        return decode(self.path, ports, **kw)


def _flatten(value: Any) -> str | None:
    """tshark JSON list of strings -> one string (joined with ',')."""
    if value is None:
        return None
    items = value if isinstance(value, list) else [value]
    return ",".join(str(v) for v in items)


def decode(
    path: str | Path,
    ports: Iterable[int] = (5683,),
    *,
    fields: Sequence[str] = DEFAULT_FIELDS,
    display_filter: str = DEFAULT_DISPLAY_FILTER,
    timeout: float = 60.0,
    lua_script: str | Path | None = None,
    options: Sequence[str] = (),
) -> list[dict[str, str | None]]:
    """Decode CoAP packets of a pcap(ng) file; ``ports`` are decoded as CoAP (besides 5683).

    ``lua_script`` loads a dissector (e.g. :data:`mcobserve.dissector.LUA`); ``options`` are tshark
    ``-o NAME:VALUE`` preferences. Returns one dict per CoAP packet with every name in ``fields`` as key
    (``None`` when absent).
    """
    argv = ["tshark", "-r", str(path), "-n"]
    if lua_script is not None:
        argv += ["-X", f"lua_script:{lua_script}"]
    for option in options:
        argv += ["-o", option]
    for p in sorted(set(ports)):
        argv += ["-d", f"udp.port=={int(p)},coap"]
    argv += ["-Y", display_filter, "-T", "json"]
    for f in fields:
        argv += ["-e", f]
    res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise CaptureError(f"tshark -r {path} failed ({res.returncode}): {_clean(res.stderr)}")
    out = res.stdout.strip()
    if not out:
        return []
    packets = json.loads(out)
    result: list[dict[str, str | None]] = []
    for pkt in packets:
        layers = pkt.get("_source", {}).get("layers", {})
        row = {f: _flatten(layers.get(f)) for f in fields}
        for key in ("coap.token", "udp.payload", "coap.opt.unknown", "data.data"):
            if row.get(key) is not None:
                row[key] = row[key].replace(":", "").lower()  # type: ignore[union-attr]
        result.append(row)
    return result


def _hexdump(msg: bytes) -> str:
    """One packet in text2pcap's hex dump format."""
    lines = []
    for off in range(0, len(msg), 16):
        chunk = msg[off : off + 16]
        lines.append(f"{off:06x} " + " ".join(f"{b:02x}" for b in chunk))
    return "\n".join(lines) + "\n\n"


def decode_hex_messages(
    messages: Sequence[bytes],
    src: str = "fd00:db8::1",
    dst: str = "fd00:db8::2",
    sport: int = 5683,
    dport: int = 5683,
    **kw: Any,
) -> list[dict[str, str | None]]:
    """Decode built CoAP messages offline: text2pcap wraps each in UDP/IPv6 (or IPv4), tshark decodes."""
    if shutil.which("text2pcap") is None:
        raise CaptureError("text2pcap is not installed (Debian package: wireshark-common)")
    if not messages:
        return []
    version = ipaddress.ip_address(src).version
    if ipaddress.ip_address(dst).version != version:
        raise ValueError("src and dst must be the same IP version")
    with tempfile.TemporaryDirectory(prefix="mco-t2p-") as tmp:
        txt = Path(tmp) / "in.txt"
        pcap = Path(tmp) / "out.pcapng"
        txt.write_text("".join(_hexdump(m) for m in messages))
        argv = ["text2pcap", "-q", f"-{version}", f"{src},{dst}", "-u", f"{sport},{dport}"]
        argv += [str(txt), str(pcap)]
        res = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if res.returncode != 0:
            raise CaptureError(f"text2pcap failed ({res.returncode}): {res.stderr.strip()}")
        return decode(pcap, ports=(sport, dport), **kw)


def coap_options(message: bytes | str) -> list[tuple[int, bytes]]:
    """(number, value) of each option of a CoAP UDP message (bytes or hex); independent of tshark."""
    data = bytes.fromhex(message) if isinstance(message, str) else bytes(message)
    if len(data) < 4:
        raise ValueError("CoAP message shorter than its 4-byte header")
    pos = 4 + (data[0] & 0x0F)
    number = 0
    opts: list[tuple[int, bytes]] = []
    try:
        while pos < len(data) and data[pos] != 0xFF:  # bounded: pos grows every iteration
            byte = data[pos]
            pos += 1
            ext: list[int] = []
            for nib in (byte >> 4, byte & 0x0F):
                if nib == 13:
                    ext.append(data[pos] + 13)
                    pos += 1
                elif nib == 14:
                    if pos + 2 > len(data):
                        raise IndexError(pos)
                    ext.append(int.from_bytes(data[pos : pos + 2], "big") + 269)
                    pos += 2
                elif nib == 15:
                    raise ValueError("reserved option nibble 15")
                else:
                    ext.append(nib)
            number += ext[0]
            value = data[pos : pos + ext[1]]
            if len(value) != ext[1]:
                raise ValueError("truncated option value")
            pos += ext[1]
            opts.append((number, value))
    except IndexError as exc:
        raise ValueError("truncated option header") from exc
    return opts
