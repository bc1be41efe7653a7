#!/bin/sh
# Inventory bookkeeping over a plain-text stock file (one "sku count" per line).

STOCK_FILE="${STOCK_FILE:-stock.txt}"

# stock_of SKU: prints the count for SKU (0 when unknown).
stock_of() { awk -v s="$1" '$1 == s { print $2; found=1 } END { if (!found) print 0 }' "$STOCK_FILE"; }

# receive SKU N: adds N units of SKU.
receive() {
  n=$(( $(stock_of "$1") + $2 ))
  grep -v "^$1 " "$STOCK_FILE" > "$STOCK_FILE.tmp" 2>/dev/null
  echo "$1 $n" >> "$STOCK_FILE.tmp" && mv "$STOCK_FILE.tmp" "$STOCK_FILE"
}

# ship SKU N: removes N units of SKU, refusing to go below zero.
ship() {
  have=$(stock_of "$1")
  if [ "$have" -lt "$2" ]; then echo "not enough $1: have $have, need $2" >&2; return 1; fi
  receive "$1" "-$2"
}
