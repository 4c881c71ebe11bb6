# Shared by scripts/test and scripts/test-examples (sourced, not run):
# installing what a suite needs, and keeping each suite's pass/fail counts.
# shellcheck shell=bash

say() { printf '==> %s\n' "$*"; }

# Installs Debian packages, as root or through sudo; fails saying how.
apt_install() {
  local runner=()
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
      runner=(sudo)
    else
      echo "error: $* missing and not root: install with 'apt-get install $*'" >&2
      exit 1
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "error: $* missing and no apt-get here: install $* with your package manager" >&2
    exit 1
  fi
  say "installing $* (apt-get)"
  if [ -z "${APT_UPDATED:-}" ]; then
    "${runner[@]}" apt-get update -qq
    APT_UPDATED=1
  fi
  DEBIAN_FRONTEND=noninteractive "${runner[@]}" apt-get install -y -qq "$@" >/dev/null
}

# ensure_command COMMAND PACKAGE: installs PACKAGE when COMMAND is missing.
ensure_command() {
  if ! command -v "$1" >/dev/null 2>&1; then
    apt_install "$2"
    if ! command -v "$1" >/dev/null 2>&1; then
      echo "error: $1 still missing after installing $2: check 'dpkg -L $2'" >&2
      exit 1
    fi
  fi
}

# Each suite's outcome, one line per suite: name, passed, failed, note.
RESULTS_FILE="$(mktemp "${TMPDIR:-/tmp}/discovered-results.XXXXXX")"
trap 'rm -f "$RESULTS_FILE"' EXIT

# record SUITE PASSED FAILED [NOTE]: a suite that could not run, or ran no
# test, is recorded with a NOTE and counts as failed.
record() {
  local note="${4:-}"
  if [ "$2" -eq 0 ] && [ "$3" -eq 0 ] && [ -z "$note" ]; then
    note="ran no test"
  fi
  printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$note" >>"$RESULTS_FILE"
}

# Prints every suite's counts and a total line; returns 1 if any suite
# failed, did not run, or ran no test.
print_summary() {
  local name passed failed note total_passed=0 total_failed=0 bad=0
  say "summary"
  while IFS=$'\t' read -r name passed failed note; do
    total_passed=$((total_passed + passed))
    total_failed=$((total_failed + failed))
    if [ -n "$note" ]; then
      bad=1
      printf '    %-10s %s passed, %s failed  FAILED: %s\n' "$name" "$passed" "$failed" "$note"
    else
      [ "$failed" -eq 0 ] || bad=1
      printf '    %-10s %s passed, %s failed\n' "$name" "$passed" "$failed"
    fi
  done <"$RESULTS_FILE"
  if [ "$bad" -eq 0 ]; then
    printf 'all suites passed: %s passed, %s failed\n' "$total_passed" "$total_failed"
  else
    printf 'SUITES FAILED: %s passed, %s failed\n' "$total_passed" "$total_failed"
  fi
  return "$bad"
}

# run_logged LOG COMMAND...: runs COMMAND showing its output and keeping a
# copy in LOG; returns COMMAND's exit status.
run_logged() {
  local log="$1" status=0
  shift
  mkdir -p "$(dirname "$log")"
  "$@" 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
  return "$status"
}

# count WORD LOG: the number N of the last "N WORD" in LOG (0 if none).
count() {
  local n
  n="$(grep -oE "[0-9]+ $1" "$2" | tail -n 1 | cut -d' ' -f1)"
  echo "${n:-0}"
}
