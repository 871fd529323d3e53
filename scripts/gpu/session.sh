#!/usr/bin/env bash
# A GPU session as a background job graph that outlives single device calls (each call is at most
# 10 minutes; the machine stays while calls follow each other within 30 s). Phases:
#   stage CALL_DIR        : stage-in a call folder of scripts/gpu/stage.py (binary, models, data)
#   start JOBS [CALL_DIR] : (stage-in the last folder, then) run scripts/gpu/jobs/JOBS.sh in the
#                           background (setsid), logging to /tmp/dmq/run/jobs.log
#   poll [SECONDS]        : wait up to SECONDS (default 0) or until the graph ends, print progress,
#                           and copy results to $OUT: results.tar.gz (every *.json, *.png and *.log
#                           tail under /tmp/dmq/run/out) and each /tmp/dmq/run/out/*.tar.xz artifact
# Job files see F=/tmp/dmq/files (staged inputs) and W=/tmp/dmq/run (work; W/out returns).
set -uo pipefail
PHASE=$1
W=/tmp/dmq/run; mkdir -p $W/out
case $PHASE in
stage) bash scripts/gpu/stage-in.sh "$2" ;;
start)
  [ -n "${3:-}" ] && { bash scripts/gpu/stage-in.sh "$3" || exit 1; }
  cp "scripts/gpu/jobs/$2.sh" $W/jobs.sh
  ( cd "$PWD" && setsid nohup bash -c "source scripts/gpu/env.sh; F=/tmp/dmq/files W=$W; export F W; \
      source $W/jobs.sh; echo \"[\$(date +%T)] all done\"" > $W/jobs.log 2>&1 < /dev/null & )
  sleep 20; cat $W/jobs.log ;;
poll)
  end=$((SECONDS + ${2:-0}))
  while [ $SECONDS -lt $end ] && ! grep -q "all done" $W/jobs.log 2>/dev/null; do sleep 10; done
  cat $W/jobs.log; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
  for f in $W/*.log; do echo "== $f"; tail -c 400 "$f" | tr '\r' '\n' | grep -v '^$' | tail -3; done
  ( cd $W/out && tar czf $OUT/results.tar.gz --exclude='*.tar.xz' . ) 2>/dev/null
  for a in $W/out/*.tar.xz; do [ -f "$a" ] && cp "$a" $OUT/; done; ls -la $OUT ;;
esac
