#!/usr/bin/env bash
# Regenerate reports/examples/: a three-run comparison as Markdown and HTML, plus a headless
# Chromium screenshot of the HTML.
#
#   [TITLE="..."] reports/examples/make_example.sh RUN RUN RUN   # from existing results files / run directories
#   reports/examples/make_example.sh --demo        # run the offline demo three ways, then render
#   reports/examples/make_example.sh --synthetic   # layout only: made-up, clearly labelled rows
#
# Needs Debian's chromium for the screenshot (apt-get install -y chromium).
set -euo pipefail
cd "$(dirname "$0")/../.."
ex=reports/examples
title="${TITLE:-geneval report: demo model, three samplers}"

if [[ "${1:-}" == "--demo" ]]; then
  geneval run --sampler ddim --steps 20 --seed 0 --run-id example-ddim-20 --out-dir reports --no-progress
  geneval run --sampler heun --steps 10 --seed 1 --run-id example-heun-10 --out-dir reports --no-progress
  geneval run --sampler euler --steps 5 --seed 2 --run-id example-euler-5 --out-dir reports --no-progress
  runs=(reports/example-ddim-20 reports/example-heun-10 reports/example-euler-5)
elif [[ "${1:-}" == "--synthetic" ]]; then
  tmp=$(mktemp -d)
  python "$ex/synthetic_runs.py" "$tmp" >/dev/null
  runs=("$tmp"/synthetic-ddim-20 "$tmp"/synthetic-heun-10 "$tmp"/synthetic-euler-5)
  title="geneval report: SYNTHETIC example rows (made-up numbers, layout only)"
elif [[ $# -ge 1 ]]; then
  runs=("$@")
else
  sed -n '2,10p' "$0"; exit 2
fi

geneval report "${runs[@]}" --format md --title "$title" --out "$ex/report.md"
geneval report "${runs[@]}" --format html --title "$title" --out "$ex/report.html"
if command -v chromium >/dev/null; then
  profile=$(mktemp -d)
  chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync \
    --user-data-dir="$profile" --hide-scrollbars --screenshot="$PWD/$ex/report.png" \
    --window-size=1200,1250 "file://$PWD/$ex/report.html" 2>/dev/null
  rm -rf "$profile"
  echo "wrote $ex/report.png" >&2
else
  echo "chromium not found: skipped the screenshot (apt-get install -y chromium)" >&2
fi
