#!/usr/bin/env bash
# Installs the command-line tools that tests/unit/deploy uses to check deploy/ offline: kubectl (renders the kustomize
# base with `kubectl kustomize`) and docker-compose (parses the compose file with `docker-compose config`, no daemon).
# Idempotent: a tool already on PATH is kept, whatever its version, and apt is not touched when both are there.
set -euo pipefail
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    echo "install_deploy_tools.sh: ${missing[*]} missing; run as root (apt-get) or install them yourself" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
