# The two commands of the README. Each sets up what it needs first, so both work on a fresh machine.
.PHONY: run test lint bench

# Server on embedded SQLite plus a local peer with its web UI.
run:
	scripts/bootstrap.sh
	.venv/bin/peerpost up

# Lint (ruff and mypy), then every test: unit, integration, crypto vectors, network namespaces, browser.
test:
	scripts/bootstrap.sh --test
	$(MAKE) lint
	.venv/bin/python -m pytest

# ruff (style and bugs) and mypy (types; strict for crypto/ and signalling/protocol.py, see pyproject.toml).
lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

bench:
	.venv/bin/python -m bench.crypto
	.venv/bin/python -m bench.login_stall
	.venv/bin/python -m bench.relay
	.venv/bin/python -m bench.p2p
	.venv/bin/python -m bench.nat
	.venv/bin/python -m bench.peers
	.venv/bin/python -m bench.tail
	.venv/bin/python -m bench.scale
	.venv/bin/python -m bench.mailbox
	.venv/bin/python -m bench.cluster
