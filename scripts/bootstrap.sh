#!/usr/bin/env bash
# Sets up a fresh machine for PeerPost: system packages (when root), the services the tests use,
# and the Python virtual environment at .venv with the pinned dependency tree. Idempotent.
#   scripts/bootstrap.sh          everything the product needs
#   scripts/bootstrap.sh --test   plus what the test suite needs (chromium, coturn, iptables, services)
set -euo pipefail
cd "$(dirname "$0")/.."
want_test=0
[ "${1:-}" = "--test" ] && want_test=1

say() { printf '[bootstrap] %s\n' "$*"; }

apt_packages=(python3-venv)
if [ "$want_test" = 1 ]; then
  apt_packages+=(chromium coturn iptables conntrack iproute2 procps fonts-dejavu-core prosody)
fi

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  missing=()
  for p in "${apt_packages[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  # coturn's package starts a daemon on 3478 on some systems; the NAT bed runs its own.
  if [ "$want_test" = 1 ] && pgrep -x turnserver >/dev/null 2>&1 && [ -f /etc/init.d/coturn ]; then
    /etc/init.d/coturn stop >/dev/null 2>&1 || true
  fi
  # Likewise prosody's package may start its own daemon on 5222; bench/peers.py runs its own
  # instance with a generated config in a temporary folder.
  if [ "$want_test" = 1 ] && [ -f /etc/init.d/prosody ] && pgrep -u prosody -x lua5.4 >/dev/null 2>&1; then
    /etc/init.d/prosody stop >/dev/null 2>&1 || true
  fi
else
  say "not root: skipping system packages (${apt_packages[*]})"
fi

if [ "$want_test" = 1 ]; then
  # PostgreSQL and Redis back the scale-out tests; start them when this machine has them but they are down.
  if command -v pg_ctlcluster >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null; then
    say "starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  fi
  if command -v redis-server >/dev/null && ! (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
    say "starting Redis"
    mkdir -p /var/lib/redis /var/log/redis
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  fi
fi

python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  say "creating .venv"
  "$python" -m venv .venv
fi
stamp=.venv/.peerpost-lock
if [ ! -f "$stamp" ] || ! cmp -s requirements.lock "$stamp"; then
  say "installing pinned Python dependencies"
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.lock
  cp requirements.lock "$stamp"
fi
.venv/bin/pip install -q --no-deps -e .
say "ready"
