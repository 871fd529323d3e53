# FID-10k of the base-w4a6 artifact returned by w4a6-dmq-ptqd.sh (staged as base-w4a6.tar.xz):
# plain (--ptqd-parts none), then with its PTQD correction. One evaluation at a time (each fills
# the GPU), after the train statistics.
source scripts/gpu/jobs/common.sh
( stats ) &
( while [ ! -f $F/base-w4a6.tar.xz ]; do sleep 5; done; tar xJf $F/base-w4a6.tar.xz -C $W
  e base-w4a6 $W/q-base-w4a6 --ptqd-parts none; e base-w4a6-ptqd $W/q-base-w4a6 ) &
wait
