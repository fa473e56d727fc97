#!/usr/bin/env bash
# Installs the Tessera agent as a systemd service: see scripts/install.sh for the options.
exec bash "$(dirname "$0")/install.sh" agent "$@"
