"""`uvicorn bench.probed_forwarder:app`: the bare forwarder with bench/probed_server.py's probes.

So bench/tail.py can show the forwarder's loop lag beside the hub's at the same offered rate: long
loop turns that both have come from the machine (the process not scheduled), not from the hub.
"""

from __future__ import annotations

from bench.forwarder import app as _forwarder
from bench.probed_server import wrap

app = wrap(_forwarder)
