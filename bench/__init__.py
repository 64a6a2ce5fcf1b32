"""Benchmark of group observations against RFC 7641 observation (``mcobserve bench``).

* :mod:`bench.harness` builds a private namespace (:class:`mcobserve.netlab.OneHost`), starts one
  server process and a few client processes per (mode, N) and drives them over JSON-line pipes.
* :mod:`bench.server_proc` is the server process: a :class:`~mcobserve.aio.server.GroupServer` or a
  plain aiocoap ``ObservableResource``, counting datagrams at its socket and measuring its own CPU.
* :mod:`bench.clients` simulates many observers per process with plain sockets.
* :mod:`bench.report` writes ``results.md``, ``results.json``, ``machine.md`` and ``plot.png``.
"""

MODES = ("group", "traditional-non", "traditional-con")
