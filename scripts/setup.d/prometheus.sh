#!/usr/bin/env bash
# palisade-metrics' integration test (crates/palisade-metrics/tests/prometheus.rs) starts a real
# Prometheus server, Debian's `prometheus` package, on a loopback port of its own.
# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt-install.sh"
apt_install prometheus prometheus
