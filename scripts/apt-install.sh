#!/usr/bin/env bash
# apt_install PACKAGE COMMAND: installs a Debian package when COMMAND is not on the PATH.
# Sourced by the scripts in scripts/setup.d.
apt_install() {
    local package=$1 command=$2
    if command -v "$command" >/dev/null 2>&1; then
        return 0
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo="sudo"
    fi
    echo "installing Debian package $package (for $command)"
    if [ -z "${PALISADE_APT_UPDATED:-}" ]; then
        $sudo apt-get update -qq
        export PALISADE_APT_UPDATED=1
    fi
    # The packages ship services; a policy that forbids starting them keeps the install
    # from starting daemons the tests do not use.
    DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo apt-get install -y -qq --no-install-recommends "$package" >/dev/null
    command -v "$command" >/dev/null 2>&1
}
