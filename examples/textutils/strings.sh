#!/bin/sh
# String helpers.

# upper TEXT: TEXT in capitals.
upper() { echo "$1" | tr 'a-z' 'A-Z'; }
