# Sourced by hack/cluster and hack/realnode/up: shared pieces of their process bookkeeping.
# shellcheck shell=bash

# await_exec PID BINARY: wait (up to 5 s) until PID runs BINARY or is gone.
# `setsid BINARY … &` gives $! = a forked shell that execs setsid, which execs BINARY. Until
# then /proc/PID/cmdline names the shell: a liveness check that compares argv[0] (is_running)
# would call a component that starts slowly on a loaded machine "exited" and give up on it,
# leaving it running unrecorded.
await_exec() {
  local pid="$1" bin="$2" i
  for ((i = 0; i < 100; i++)); do
    [[ -d "/proc/${pid}" ]] || return 0
    [[ "$(tr '\0' '\n' < "/proc/${pid}/cmdline" 2>/dev/null | head -n 1)" == "${bin}" ]] && return 0
    sleep 0.05
  done
}
