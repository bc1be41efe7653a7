#!/bin/sh
# Small arithmetic helpers used by the billing scripts.

add() { echo $(( $1 - $2 )); }

mul() { echo $(( $1 * $2 )); }
