#!/usr/bin/env bash
# What a person at a terminal sees during a run: 300 prompts through SmolLM2 on a local Ray,
# in a tmux pane (a real terminal, so the progress bar is drawn), captured three times.
#   bash benchmarks/progress_capture.sh > /tmp/capture.txt
# Needs tmux and the set-up of `make setup`. Writes to /tmp/raysight-progress.
set -euo pipefail
cd "$(dirname "$0")/.."
work=/tmp/raysight-progress
rm -rf "$work" && mkdir -p "$work"
.venv/bin/python - "$work/prompts.jsonl" <<'PY'
import json, sys
words = "the quick brown fox jumps over a lazy dog while seven curious cats watch".split()
with open(sys.argv[1], "w") as f:
    for i in range(300):
        n = 4 + (i * 7) % 40  # 4 to 43 words
        f.write(json.dumps({"id": i, "text": " ".join(words[(i + k) % len(words)] for k in range(n))}) + "\n")
PY
cmd=".venv/bin/raysight run specs/extract_dataset.yaml --set data.source=$work/prompts.jsonl \
--set output.path=$work/out --set execution.shard_rows=100 --set execution.batch_tokens=2048"
tmux kill-session -t rsprog 2>/dev/null || true
tmux new-session -d -s rsprog -x 100 -y 12 "$cmd; echo EXIT=\$?; sleep 600"
# the pane every 4 s until the run ends; the bar line only (the rest does not change)
t=0
while ! tmux capture-pane -p -t rsprog | grep -q "EXIT="; do
  sleep 4; t=$((t + 4))
  echo "[${t} s] $(tmux capture-pane -p -t rsprog | grep -E 'rows' | tail -1 | sed -e 's/[[:space:]]*$//')"
done
echo "----- the whole pane at the end"
tmux capture-pane -p -t rsprog | sed -e 's/[[:space:]]*$//' | grep -v '^$'
tmux kill-session -t rsprog
echo "----- the same run with stderr not a terminal (CI, a Ray job's log)"
rm -rf "$work/out"
$cmd 2>&1 | sed -e 's/[[:space:]]*$//'
