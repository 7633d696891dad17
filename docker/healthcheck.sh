#!/bin/bash
# HEALTHCHECK without curl in the image: GET /health over bash's /dev/tcp.
# Exits 0 on HTTP 200, 1 otherwise. Reads the port from TUNESERVE_BIND.
set -u
bind="${TUNESERVE_BIND:-127.0.0.1:8080}"
port="${bind##*:}"
host="${bind%:*}"
case "$host" in
  "" | 0.0.0.0 | "*") host=127.0.0.1 ;;
  "[::]") host=::1 ;;
  \[*\]) host="${host#[}"; host="${host%]}" ;;
esac
exec 3<>"/dev/tcp/$host/$port" || exit 1
printf 'GET /health HTTP/1.1\r\nHost: %s\r\nUser-Agent: docker-healthcheck\r\nConnection: close\r\n\r\n' "$host:$port" >&3
IFS= read -r -t 5 status_line <&3 || exit 1
case "$status_line" in
  "HTTP/1."?" 200"*) exit 0 ;;
  *) echo "unhealthy: ${status_line%$'\r'}" >&2; exit 1 ;;
esac
