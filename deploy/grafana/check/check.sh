#!/usr/bin/env bash
# Type-checks deploy/grafana/flightdeck.json against @grafana/schema's Dashboard type
# (see dashboard.ts). Installs the pinned packages from package-lock.json with `npm ci`
# (served from npm's cache when it has them) and runs the TypeScript compiler; nothing
# is emitted. Needs Node.js and npm.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if ! command -v npm >/dev/null; then
  echo "check.sh: npm not found: install Node.js and npm" >&2
  exit 1
fi

npm ci --silent --prefer-offline --no-audit --no-fund
npx --no-install tsc --noEmit
echo "dashboard type check: ok ($(npx --no-install tsc --version), @grafana/schema $(node -p 'require("@grafana/schema/package.json").version'))"
