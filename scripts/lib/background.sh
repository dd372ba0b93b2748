# Shared by .ci/run and scripts/cross-test (sourced, not run): a build that runs at the lowest
# priority beside other work, its output kept aside until it is waited for.
#   in_background NAME COMMAND…   starts COMMAND (a program or a shell function) at nice 19
#   wait_background NAME          waits for it; on failure prints its output and fails; prints
#                                 the last line matching $2 (when given) on success; does
#                                 nothing for a NAME never started
#   pause_background NAME         stops it (SIGSTOP, with its children) while something needs a
#                                 quiet machine; resume_background NAME lets it go on
#   stop_backgrounds              kills what is still running, with its children (for a trap)
declare -gA background_pid=() background_log=()

in_background() {
  local name="$1"
  shift
  background_log[$name]="$(mktemp)"
  ( renice -n 19 -p "$BASHPID" >/dev/null; "$@" ) >"${background_log[$name]}" 2>&1 &
  background_pid[$name]=$!
}

wait_background() {
  local name="$1" pattern="${2:-}" pid="${background_pid[$1]:-}" log="${background_log[$1]:-}"
  [ -n "$pid" ] || return 0
  unset "background_pid[$name]"
  if ! wait "$pid"; then
    cat "$log"
    echo "$name failed" >&2
    rm -f "$log"
    return 1
  fi
  [ -z "$pattern" ] || echo "== $name: $(grep -E "$pattern" "$log" | tail -n 1)"
  rm -f "$log"
}

# Kills a process and its descendants, children first (and wakes them, should they be paused).
kill_tree() {
  local child
  for child in $(pgrep -P "$1" 2>/dev/null); do
    kill_tree "$child"
  done
  kill "$1" 2>/dev/null || true
  kill -CONT "$1" 2>/dev/null || true
}

# Sends SIGNAL to a process and then to its descendants: parents first, so that a stopped
# parent starts no child the walk would miss.
signal_tree() {
  local child
  kill "-$1" "$2" 2>/dev/null || true
  for child in $(pgrep -P "$2" 2>/dev/null); do
    signal_tree "$1" "$child"
  done
}

pause_background() {
  [ -z "${background_pid[$1]:-}" ] || signal_tree STOP "${background_pid[$1]}"
}

resume_background() {
  [ -z "${background_pid[$1]:-}" ] || signal_tree CONT "${background_pid[$1]}"
}

stop_backgrounds() {
  local name
  for name in "${!background_pid[@]}"; do
    kill_tree "${background_pid[$name]}"
    rm -f "${background_log[$name]}"
  done
}
