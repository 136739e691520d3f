#!/bin/sh
# Installs the operations tools the deploy tests run for real: Prometheus + promtool, Alertmanager (Debian
# packages) and systemd-analyze (package systemd). Idempotent: returns at once when everything is there.
# Needs root (or passwordless sudo) to install; without it, the tests that need a missing tool skip with the reason.
set -eu

missing=""
command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1 || missing="$missing prometheus"
command -v prometheus-alertmanager >/dev/null 2>&1 || missing="$missing prometheus-alertmanager"
command -v systemd-analyze >/dev/null 2>&1 || missing="$missing systemd"
[ -z "$missing" ] && exit 0

if [ "$(id -u)" -eq 0 ]; then
    SUDO=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO="sudo -n"
else
    echo "install_ops_tools: not root and no passwordless sudo; not installing:$missing" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_ops_tools: no apt-get here; install$missing by hand" >&2
    exit 0
fi

# The packages start their own services where a service manager runs; the tests never use those: they start
# their own instances on loopback with temp dirs.
export DEBIAN_FRONTEND=noninteractive
if ! { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null; }; then
    echo "install_ops_tools: apt-get could not install$missing; the tests that need them will skip" >&2
fi
