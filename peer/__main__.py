"""`python -m peer` is `peerpost`."""

from peer.cli import main

if __name__ == "__main__":
    main(prog_name="peerpost")
