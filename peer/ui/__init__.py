"""The local web UI: a loopback web server that drives one Peer for the browser (docs/ui.md)."""
