"""Benchmark of group observations against RFC 7641 observation (``mcobserve bench``).

* :mod:`mcobserve.bench.harness` builds a private namespace (:class:`mcobserve.netlab.OneHost`), starts one
  server process and a few client processes per (mode, N) and drives them over JSON-line pipes.
* :mod:`mcobserve.bench.server_proc` is the server process: a :class:`~mcobserve.aio.server.GroupServer` or a
  plain aiocoap ``ObservableResource``, counting datagrams at its socket and measuring its own CPU.
* :mod:`mcobserve.bench.clients` simulates many observers per process with plain sockets.
* :mod:`mcobserve.bench.secured` writes the secured modes' OSCORE contexts, keeps the clients' in memory.
* :mod:`mcobserve.bench.report` writes ``results.md``, ``results.json``, ``machine.md`` and ``plot.png``.
"""

DEFAULT_MODES = ("group", "traditional-non", "traditional-con")
"""What a run measures unless ``--modes`` says otherwise."""
SECURED_MODES = ("group-oscore", "traditional-oscore", "traditional-oscore-con")
"""Group OSCORE group observation; OSCORE RFC 7641 observation, NON or CON (:mod:`.secured`)."""
MODES = DEFAULT_MODES + SECURED_MODES
GROUP_MODES = ("group", "group-oscore")
"""Modes with one multicast notification per update."""
CON_MODES = ("traditional-con", "traditional-oscore-con")
"""Modes with CON notifications (one ACK per observer and update)."""
WARMUPS = 16
"""Warm-up resources per case, one registration each before the measurements (see the harness): CPython
3.11 runs code slower until it ran it several times and specialised it; a serving process has."""


def warmup_path(k: int) -> str:
    """The Uri-Path of warm-up resource ``k`` (0 <= k < WARMUPS)."""
    return f"w{k}"
