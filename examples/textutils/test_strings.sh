#!/bin/sh
# Run with: sh test_strings.sh
. ./strings.sh
fail=0
check() {
  if [ "$2" = "$3" ]; then echo "ok   $1"; else echo "FAIL $1: expected $3, got $2"; fail=1; fi
}
check "upper abc" "$(upper abc)" ABC
exit $fail
