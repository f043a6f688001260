#!/usr/bin/env bash
# Installs the command-line tools that tests/unit/deploy uses to check deploy/ offline: kubectl (renders the kustomize
# base with `kubectl kustomize`) and docker-compose (parses the compose file with `docker-compose config`, no daemon);
# and nft (nftables), with which tests/integration/test_cluster.py cuts a worker off the network for real.
# Idempotent: a tool already on PATH is kept, whatever its version, and apt is not touched when both are there.
set -euo pipefail
missing=()
command -v kubectl >/dev/null 2>&1 || missing+=(kubernetes-client)
command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
command -v nft >/dev/null 2>&1 || [ -x /usr/sbin/nft ] || missing+=(nftables)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" -ne 0 ]; then
    # Not fatal: serving, training and every other test work without them; the deploy checks then fail naming them.
    echo "install_deploy_tools.sh: ${missing[*]} missing; run as root (apt-get) or install them yourself" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
