#!/bin/bash
# prove-only re-measurement (clean peak RSS via /usr/bin/time -v; circuits and witnesses already exist)
PY=/work/main/.venv/bin/python
for d in circuits/*/; do
  n=$(basename $d); w=runs/$n.wit.json; p=runs/$n.proof2.json
  [ -f $w ] || continue
  /usr/bin/time -v timeout 300 $PY bench.py child $d $w $p > /tmp/rm.out 2> /tmp/rm.err
  rss=$(grep "Maximum resident" /tmp/rm.err | awk '{print $6}')
  echo "{\"name\": \"$n\", \"prove2\": $(tail -1 /tmp/rm.out), \"rss_kb\": $rss}"
done
