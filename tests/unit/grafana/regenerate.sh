#!/usr/bin/env bash
# Regenerates dashboard.schema.json from Grafana's published dashboard types (see README.md).
# Needs node/npm and the npm registry; writes only into this directory.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
schema_version="${GRAFANA_SCHEMA_VERSION:-13.2.3}"
generator_version="${TS_JSON_SCHEMA_GENERATOR_VERSION:-2.9.0}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
npm pack --silent "@grafana/schema@${schema_version}" >/dev/null
tar xzf "grafana-schema-${schema_version}.tgz"
cp package/dist/types/raw/dashboard/x/types.gen.d.ts dashboard_types.gen.ts
cp package/LICENSE_APACHE2 "$here/LICENSE_APACHE2"
npm init -y >/dev/null
npm install --silent --no-audit --no-fund "ts-json-schema-generator@${generator_version}" >/dev/null
npx ts-json-schema-generator --path dashboard_types.gen.ts --type Dashboard --no-type-check \
  -o "$here/dashboard.schema.json"
sha256sum "grafana-schema-${schema_version}.tgz" package/dist/types/raw/dashboard/x/types.gen.d.ts
