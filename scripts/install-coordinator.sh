#!/usr/bin/env bash
# Installs a Tessera coordinator as a systemd service: see scripts/install.sh for the options.
exec bash "$(dirname "$0")/install.sh" coordinator "$@"
