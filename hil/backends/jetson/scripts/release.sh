# `hil release`: remove every kept container on the board; their lease holders let go.
#
# env LABEL  the label of kept containers
# out released N
ids=$(docker ps -aq --filter "label=$LABEL")
[ -n "$ids" ] && docker rm -f $ids >/dev/null
echo "released $(echo $ids | wc -w)"
