# `hil release`: remove kept containers on the board (this holder's, or every one with ALL=1);
# their keepers then let go of the lease.
#
# env LABEL  the label of kept containers    OWNER_LABEL, OWNER  the holder's label and value
#     ALL    1: every holder's
# out released N, and `others M` when M containers of other holders were left
if [ "$ALL" = 1 ]; then
  ids=$(docker ps -aq --filter "label=$LABEL")
  others=""
else
  ids=$(docker ps -aq --filter "label=$LABEL" --filter "label=$OWNER_LABEL=$OWNER")
  others=$(docker ps -aq --filter "label=$LABEL" | grep -vxF "$ids")
fi
[ -n "$ids" ] && docker rm -f $ids >/dev/null
echo "released $(echo $ids | wc -w)"
[ -n "$others" ] && echo "others $(echo $others | wc -w)"
true
