#!/bin/sh
# stackvault DB fixture, MariaDB: continuous writer, run INSIDE the container (sh + mariadb client).
# One `CALL add_call(n)` per transaction (a calls row, its audit row via the trigger, a note and a
# recording), over one client connection, serially: ids are committed in increasing order, so a
# watermark taken with watermark.sql never has uncommitted ids below it.
#
#   docker exec -d -e MYSQL_PWD=pw X sh -c "$(cat tests/db/mariadb/writer.sh)" writer [STOP] [SEED] [PAUSE]
#
# STOP  stop file (default /tmp/stackvault-writer.stop): the writer stops when it appears, then
#       writes STOP.done (the client's exit status; 0 = fine; its stderr is in STOP.log). STOP.pid holds
#       the writer shell's pid.
# SEED  first seed passed to add_call (default 1); PAUSE  seconds to sleep between batches of 20
#       calls (default 0: as fast as the server commits).
# The client acknowledges each batch through the FIFO STOP.ack and the loop keeps at most two
# batches in flight, so the writer stops within ~40 calls of STOP appearing; STOP.done tells when.
# Killing the host's `docker exec` client does NOT stop this; create the stop file instead
# (docker exec X touch /tmp/stackvault-writer.stop), or `kill "$(cat STOP.pid)"` inside the
# container (TERM/INT/HUP = create the stop file), or remove the container.
stop=${1:-/tmp/stackvault-writer.stop}
i=${2:-1}
pause=${3:-0}
rm -f "$stop" "$stop.done" "$stop.ack" "$stop.log"
mkfifo "$stop.ack"
trap 'touch "$stop"' TERM INT HUP
batch() {
  n=0
  while [ $n -lt 20 ]; do echo "CALL add_call($i);"; i=$((i + 1)); n=$((n + 1)); done
  printf '%s\n' "SELECT 'ack';"
}
{
  {
    exec 3<"$stop.ack"
    batch
    while [ ! -e "$stop" ]; do
      batch
      read -r _ <&3 || break   # the previous batch is done (EOF: the client has exited)
      [ "$pause" = 0 ] || sleep "$pause"
    done
    exec >&-                   # EOF to the client; it finishes what it has,
    cat <&3 >/dev/null         # and its last acks are read until it exits
  } | mariadb -uroot --batch --skip-column-names --unbuffered calls > "$stop.ack" 2> "$stop.log"
  echo $? > "$stop.done"
  rm -f "$stop.ack"
} &
echo $$ > "$stop.pid"
# A trapped signal interrupts `wait` (not a foreground pipeline): wait again until the job is done.
until wait $!; do [ -e "$stop.done" ] && break; done
