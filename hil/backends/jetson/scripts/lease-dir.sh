# The board's lease folder ($DIR): functions included by the lease scripts.
#
# lease_dir [make]  checks $DIR (making it 0700 first with `make`) before anything is read or
#   written in it: a real folder (not a link) that is this user's and closed to everyone else,
#   or root's with a group of this user and closed to others (a lab provisions it so, see
#   docs/security.md). Anything else: `REFUSED <why>` and exit 73, nothing written. A folder
#   of this user's that others could open (made by an older pytest-hil) is closed (0700).
#   A link (or a folder) in place of the holder file is refused the same way.
# write_holder LINE  replaces $DIR/lease.holder with LINE: a file made by mktemp (0600, new,
#   ours), renamed over the old one, so nothing planted there is ever written through.
# read_holder  the holder line (at most 4096 bytes), empty when there is none.
lease_dir() {
  [ "$1" = make ] && mkdir -m 0700 "$DIR" 2>/dev/null
  if [ -L "$DIR" ] || { [ -e "$DIR" ] && [ ! -d "$DIR" ]; }; then
    echo "REFUSED $DIR is not a folder (a link or a file): remove it or provision it (docs/security.md)"
    exit 73
  fi
  [ -d "$DIR" ] || return 1
  lease_owner=$(stat -c %u "$DIR") lease_group=$(stat -c %g "$DIR") lease_mode=$(stat -c %a "$DIR")
  if [ "$lease_owner" = "$(id -u)" ]; then
    # Readable would do harm too: whoever can open the folder can flock it.
    [ $((0$lease_mode & 077)) -eq 0 ] || chmod 0700 "$DIR" || exit 73
    lease_holder_ok
    return 0
  fi
  if [ "$lease_owner" = 0 ] && [ $((0$lease_mode & 007)) -eq 0 ]; then
    for g in $(id -G); do [ "$g" = "$lease_group" ] && { lease_holder_ok; return 0; }; done
  fi
  lease_user=$(stat -c %U "$DIR") lease_gname=$(stat -c %G "$DIR")
  [ "$lease_user" = UNKNOWN ] && lease_user=$lease_owner
  [ "$lease_gname" = UNKNOWN ] && lease_gname=$lease_group
  echo "REFUSED $DIR belongs to $lease_user:$lease_gname (mode $lease_mode), not to you nor to root" \
       "with a group of yours and closed to others: another board user made it; remove it or" \
       "provision it (docs/security.md)"
  exit 73
}
lease_holder_ok() {
  # A link or a folder where the holder line goes was planted (by another user, while an
  # older pytest-hil left the folder open): refused, never written through nor removed.
  if [ -L "$DIR/lease.holder" ] || { [ -e "$DIR/lease.holder" ] && [ ! -f "$DIR/lease.holder" ]; }; then
    echo "REFUSED $DIR/lease.holder is not a plain file (a link to $(readlink "$DIR/lease.holder")" \
         "or a folder): someone planted it; remove it after checking where it points"
    exit 73
  fi
}
write_holder() {
  holder_tmp=$(mktemp "$DIR/.holder.XXXXXX") || return 1
  printf '%s\n' "$1" >"$holder_tmp" || { rm -f "$holder_tmp"; return 1; }
  # A shared (provisioned) folder: the group reads who holds the board.
  [ "$lease_owner" = 0 ] && chmod 0640 "$holder_tmp"
  mv -fT "$holder_tmp" "$DIR/lease.holder" || { rm -f "$holder_tmp"; return 1; }
}
read_holder() {
  [ -f "$DIR/lease.holder" ] && [ ! -L "$DIR/lease.holder" ] && head -c 4096 "$DIR/lease.holder"
}
