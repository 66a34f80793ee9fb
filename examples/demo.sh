#!/usr/bin/env bash
# The main job on embedded defaults: index the sample handbook of a fictional observatory
# (Markdown, HTML, PDF, DOCX and text), search it, answer questions from it with citations, and
# compare retrieval settings on its question set. Run it twice: the second ingest is a no-op.
set -euo pipefail
cd "$(dirname "$0")/.."
ragtune="${RAGTUNE_BIN:-.venv/bin/ragtune}"
ws="${RAGTUNE_DEMO_WS:-.demo}"

[ -f "$ws/ragtune.toml" ] || "$ragtune" init "$ws"
echo; echo "== ragtune ingest examples/handbook"
"$ragtune" ingest examples/handbook --workspace "$ws"
echo; echo "== ragtune index stats"
"$ragtune" index stats --workspace "$ws"
for q in "Who founded the observatory?" \
         "What is the maximum hotel rate per night in a capital city?" \
         "What was the total income in the 2025 financial year?"; do
  echo; echo "== ragtune search \"$q\" -k 3"
  "$ragtune" search "$q" -k 3 --workspace "$ws"
done
echo; echo "== ragtune search \"wifi network name\" --mode bm25 --filter source='*.docx' -k 1"
"$ragtune" search "wifi network name" --mode bm25 --filter 'source=*.docx' -k 1 --workspace "$ws"
# The RAG chain: retrieve, augment (numbered, fenced sources), generate with the bundled SmolLM2.
for q in "Who founded the observatory?" \
         "Where is the Badge Office?"; do
  echo; echo "== ragtune ask \"$q\""
  "$ragtune" ask "$q" --workspace "$ws"
done
# Evaluate and compare: a retrieval sweep on the handbook's questions (tracked in MLflow inside
# the workspace; a rerun skips finished runs), then one HTML report of all its runs.
echo; echo "== ragtune experiment run examples/sweep.toml"
"$ragtune" experiment run examples/sweep.toml --workspace "$ws"
echo; echo "== ragtune report --sweep handbook-retrieval -o $ws/report.html"
"$ragtune" report --sweep handbook-retrieval -o "$ws/report.html" --workspace "$ws"
