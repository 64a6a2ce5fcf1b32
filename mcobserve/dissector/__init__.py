"""The Wireshark/tshark Lua dissector shipped with mcobserve (``mcobserve dissector install``).

:data:`LUA` is the path of ``mcobserve.lua``: the informative-response payload (draft §4.2, every key of
the §11 table, CRIs as URIs), Feedback-Divider and Listen-To-Multicast-Responses.
"""

from __future__ import annotations

from pathlib import Path

#: The dissector file in the installed package.
LUA = Path(__file__).resolve().with_name("mcobserve.lua")
