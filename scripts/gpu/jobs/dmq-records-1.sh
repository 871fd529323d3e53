# Issue #6 records, first machine (needs a binary with DMQ): W4A6 first, where the issue asks DMQ to
# beat the base, then W4A8. Reduced budgets so a pair fits one 30-minute machine: 1000 AdaRound
# iterations per block and 1000 LES iterations per layer (the recipes' 20 000 / 6 000 take hours
# on one GPU; the records say so). At most two processes share the GPU: one calibration (launch-
# bound) beside one evaluation; evaluations run one at a time.
source scripts/gpu/jobs/common.sh
B="--iters 1000"; L="--les-iters 1000"
( stats ) &
( q base-w4a6 base-w4a6 $B; pack base-w4a6; q dmq-w4a6 dmq-w4a6 $B $L; pack dmq-w4a6
  q dmq-w4a8 dmq-w4a8 $B $L; pack dmq-w4a8 ) &
( while [ ! -f $W/q-base-w4a6/manifest.json ]; do sleep 10; done; e base-w4a6 $W/q-base-w4a6
  while [ ! -f $W/q-dmq-w4a6/manifest.json ]; do sleep 10; done; e dmq-w4a6 $W/q-dmq-w4a6
  p dmq-w4a6 $W/q-dmq-w4a6; p base-w4a6 $W/q-base-w4a6
  while [ ! -f $W/q-dmq-w4a8/manifest.json ]; do sleep 10; done; e dmq-w4a8 $W/q-dmq-w4a8 ) &
wait
