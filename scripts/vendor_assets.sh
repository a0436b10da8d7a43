#!/usr/bin/env bash
# Copies the browser builds of the npm packages into the git-ignored static/vendor folder.
set -euo pipefail
cd "$(dirname "$0")/.."
out=src/ecoplat/web/static/vendor
mkdir -p "$out"
cp node_modules/htmx.org/dist/htmx.min.js "$out/"
cp node_modules/htmx-ext-sse/dist/sse.min.js "$out/htmx-sse.min.js" 2>/dev/null || cp node_modules/htmx-ext-sse/sse.js "$out/htmx-sse.min.js"
cp node_modules/echarts/dist/echarts.min.js "$out/"
echo "vendored: $(ls "$out" | tr '\n' ' ')"
