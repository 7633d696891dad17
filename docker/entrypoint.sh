#!/bin/bash
# Container entrypoint: makes sure pretrained weights are there, then execs
# tuneserve so that it runs as PID 1 and receives SIGTERM itself.
#
#   docker-entrypoint.sh [serve|worker] [FLAGS...]   weights first, then exec
#   docker-entrypoint.sh --workers 2                  same as: serve --workers 2
#   docker-entrypoint.sh predict|train|weights ...    exec tuneserve as is
#
# Weights (serve and worker only):
#   TUNESERVE_WEIGHTS=/path/file.safetensors   a mounted product file: used as is.
#   TUNESERVE_WEIGHTS=/path/file.h5|.keras     a mounted Keras file: imported once into
#                                              $TUNESERVE_DATA_DIR/weights/ (re-imported
#                                              when the mounted file changes), and
#                                              TUNESERVE_WEIGHTS is pointed at the result.
#   unset                                      `tuneserve weights fetch xception` at first
#                                              start: downloads, verifies and converts the
#                                              keras.applications file into the data dir;
#                                              later starts find the cache and download nothing.
#   TUNESERVE_WEIGHTS_URL=URL                  fetch from a mirror instead (same checksum).
#   TUNESERVE_FETCH_WEIGHTS=0                  skip the fetch: only `tiny` jobs can run.
# API key (serve only): with no TUNESERVE_API_KEY / TUNESERVE_API_KEY_FILE (and no
# TUNESERVE_ALLOW_UNAUTHENTICATED=true), the first start generates a random key into
# $TUNESERVE_DATA_DIR/api-key (mode 600), prints it once, and every start uses that file.
# TUNESERVE_INSTANCE defaults to the container's hostname (see below).
set -euo pipefail

data_dir="${TUNESERVE_DATA_DIR:-/data}"

log() { printf 'entrypoint: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# bash as PID 1 ignores SIGTERM unless trapped: run the slow steps in the
# background and forward a stop to them, so `docker stop` during a first-start
# download stops at once instead of after the kill timeout.
child=
on_signal() {
  if [ -n "$child" ]; then kill -TERM "$child" 2>/dev/null || true; wait "$child" 2>/dev/null || true; fi
  log "stopped by a signal before the server started"
  exit 143
}
trap on_signal TERM INT
run() {
  "$@" &
  child=$!
  local rc=0
  wait "$child" || rc=$?
  child=
  return "$rc"
}

# Serializes weight preparation between processes sharing one data volume
# (a serve replica and a worker started together).
with_lock() {
  local lock="$data_dir/weights/.prepare.lock"
  if command -v flock >/dev/null; then
    exec 9>"$lock"
    run flock 9 || die "could not lock $lock"
    "$@"
    exec 9>&-
  else
    "$@"
  fi
}

import_mounted() {
  local src="$1" out="$2"
  local stamp="$out.source" want
  want="$(stat -Lc '%s %Y' "$src") $src"
  if [ -s "$out" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    log "mounted weights already imported: $out"
    return
  fi
  log "importing mounted weights $src -> $out"
  rm -f "$out.part.safetensors"
  run tuneserve weights import "$src" --out "$out.part.safetensors" >/dev/null \
    || die "could not import $src (an Xception notop .h5/.keras, or a product .safetensors, is expected)"
  mv -f "$out.part.safetensors" "$out"
  printf '%s\n' "$want" >"$stamp"
}

fetch_pretrained() {
  log "fetching pretrained Xception weights into $data_dir/weights (skipped when already there)"
  # Partial downloads of a start that was killed (we hold the lock).
  rm -f "$data_dir"/weights/.xception-download-*
  run tuneserve weights fetch xception --data-dir "$data_dir" ${TUNESERVE_WEIGHTS_URL:+--url "$TUNESERVE_WEIGHTS_URL"} >/dev/null \
    || die "could not obtain pretrained weights. Mount a file and set TUNESERVE_WEIGHTS=/path/to/it, \
put xception_weights_tf_dim_ordering_tf_kernels_notop.h5 into $data_dir/weights/, or set \
TUNESERVE_FETCH_WEIGHTS=0 to start without them (tiny jobs only)."
}

prepare_weights() {
  if [ -n "${TUNESERVE_WEIGHTS:-}" ]; then
    [ -f "$TUNESERVE_WEIGHTS" ] && [ -r "$TUNESERVE_WEIGHTS" ] \
      || die "TUNESERVE_WEIGHTS=$TUNESERVE_WEIGHTS is not a readable file (mount it, e.g. -v /host/xception.h5:/weights/xception.h5:ro)"
    case "$TUNESERVE_WEIGHTS" in
      *.safetensors)
        log "pretrained weights: $TUNESERVE_WEIGHTS"
        ;;
      *)
        local name out
        name="$(basename "$TUNESERVE_WEIGHTS")"
        out="$data_dir/weights/mounted-${name%.*}.safetensors"
        with_lock import_mounted "$TUNESERVE_WEIGHTS" "$out"
        export TUNESERVE_WEIGHTS="$out"
        ;;
    esac
    return
  fi
  case "${TUNESERVE_FETCH_WEIGHTS:-1}" in
    0 | false | no | off)
      log "TUNESERVE_FETCH_WEIGHTS=${TUNESERVE_FETCH_WEIGHTS}: not fetching weights; jobs need variant=tiny unless $data_dir/weights/ has them"
      return
      ;;
  esac
  with_lock fetch_pretrained
}

# The image listens on 0.0.0.0, where tuneserve refuses to run without a key.
ensure_api_key() {
  [ -n "${TUNESERVE_API_KEY:-}" ] && return
  unset TUNESERVE_API_KEY
  [ -n "${TUNESERVE_API_KEY_FILE:-}" ] && return
  case "${TUNESERVE_ALLOW_UNAUTHENTICATED:-}" in true | 1 | yes | on) return ;; esac
  local file="$data_dir/api-key"
  if [ ! -s "$file" ]; then
    (umask 077 && od -An -N24 -tx1 /dev/urandom | tr -d ' \n' >"$file.part" && mv -f "$file.part" "$file")
    log "generated an API key (kept in $file; shown only now): $(cat "$file")"
    log "use it as: curl -H \"Authorization: Bearer <key>\" ...   (read it again: cat $file in the container)"
  fi
  export TUNESERVE_API_KEY_FILE="$file"
}

if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then
  set -- serve "$@"
fi

case "$1" in
  serve | worker)
    mkdir -p "$data_dir/weights" 2>/dev/null && [ -w "$data_dir/weights" ] \
      || die "$data_dir is not writable by uid $(id -u): give the volume to that user (e.g. chown -R $(id -u):$(id -g) on the host directory)"
    prepare_weights
    # Processes sharing a database need distinct names: at start a process
    # requeues the running jobs claimed under its own name. The container's
    # hostname is unique, and kept across restarts of the same container.
    export TUNESERVE_INSTANCE="${TUNESERVE_INSTANCE:-${HOSTNAME:-$(uname -n)}}"
    [ "$1" = worker ] || ensure_api_key
    ;;
esac

trap - TERM INT
exec tuneserve "$@"
