#!/usr/bin/env bash
# palisade-ratelimit's Redis backend tests (crates/palisade-ratelimit/tests/redis.rs) and its
# `redis` bench start real Redis servers, Debian's `redis-server` package, each on a loopback
# port of its own (the package's own service is not used).
# shellcheck source=scripts/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/../apt-install.sh"
apt_install redis-server redis-server
