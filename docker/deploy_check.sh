#!/usr/bin/env bash
# make deploy-check: build the CPU image and the torch-free API image and run the docker compose flow of
# docs/deployment.md for real, end to end.
#
# The engine is podman (Debian's), driven by Debian's docker-compose through podman's Docker-compatible socket. The
# script runs as root on Debian: it installs podman, runc, debootstrap, docker-compose and curl with apt where they
# are missing, and adds the podman settings this kind of machine needs to /etc/containers/containers.conf where they
# are absent (runc, because crun fails on hybrid cgroups; cgroupfs; ulimits that setrlimit accepts).
#
# Steps: the base image (pulled, or a local stand-in when no registry answers: docker/standin_base.sh), the CPU
# image and the API image (podman's layer cache makes a rebuild cheap; the API image must hold no torch and stay
# under API_IMAGE_MAX_BYTES, its size as `podman image inspect` gives it), then under compose project `vidretcheck`:
# synth, train-cpu, embed-cpu, index, export (the checkpoint as ONNX), `up -d api` (the API image serving the ONNX
# export: GET /v1/index says runtime onnx) and its HEALTHCHECK (`podman healthcheck run`: podman runs health checks from systemd
# timers, which a machine without systemd lacks), searches by id and by upload, an add with the API key and a
# delete, `restart api` (the add survives), SIGKILL of the server right after a 201 add (the restart policy brings
# it back and the add survived), `down -v`. Each step is printed with the time since the start; the last line says
# PASS or FAIL, and any failure exits non-zero.
#
# Settings (environment): VIDRET_CHECK_COLD=1 first removes the images this script builds (vidret:cpu, the
#   stand-in base, dangling build layers) to time a cold run; VIDRET_CHECK_KEEP=1 leaves the project up at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
BASE=docker.io/library/python:3.11-slim-bookworm
IMAGE=vidret:cpu
API_IMAGE=vidret:api
API_IMAGE_MAX_BYTES=1500000000  # the goal for the torch-free image (docs/deployment.md, "Images")
PROJECT=vidretcheck
T0=$(date +%s)
WORK=$(mktemp -d /tmp/vidret-deploy-check.XXXXXX)
SOCK=$WORK/podman.sock
SERVICE_PID=
DOWN_DONE=
STEP=setup

elapsed() { local s=$(($(date +%s) - T0)); printf '%d:%02d' $((s / 60)) $((s % 60)); }
step() { STEP=$*; printf '\n== [%s] %s\n' "$(elapsed)" "$*"; }
ok() { printf '   ok: %s\n' "$*"; }
fail() { echo "   FAILED: $*" >&2; exit 1; }
compose() { docker-compose --ansi never -p "$PROJECT" -f "$ROOT/docker/compose.yaml" --env-file "$WORK/check.env" "$@"; }

finish() {
    local rc=$?
    set +e
    if ((rc != 0)) && [[ -S $SOCK ]]; then
        echo "-- api container log (last 40 lines):"
        compose logs --tail 40 api 2>&1 | sed 's/^/   /'
    fi
    if [[ -S $SOCK && ${VIDRET_CHECK_KEEP:-0} != 1 && -z $DOWN_DONE ]]; then
        compose --profile demo --profile cpu down -v --remove-orphans >"$WORK/down.log" 2>&1
    fi
    [[ -n $SERVICE_PID ]] && kill "$SERVICE_PID" 2>/dev/null && wait "$SERVICE_PID" 2>/dev/null
    rm -rf "$WORK"
    if ((rc == 0)); then
        printf '\ndeploy-check: PASS in %s\n' "$(elapsed)"
    else
        printf '\ndeploy-check: FAIL at step "%s" after %s (exit %d)\n' "$STEP" "$(elapsed)" "$rc" >&2
    fi
    exit "$rc"
}
trap finish EXIT

install_tools() {
    step "tools: podman, runc, debootstrap, docker-compose, curl, iptables"
    local pkgs=() tool
    for tool in podman runc debootstrap docker-compose curl iptables; do
        command -v "$tool" >/dev/null 2>&1 || pkgs+=("$tool")
    done
    if ((${#pkgs[@]})); then
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
        ok "installed ${pkgs[*]}"
    fi
    ok "$(podman --version), $(docker-compose version --short 2>/dev/null || docker-compose --version)"
}

configure_podman() {
    step "podman settings: /etc/containers/containers.conf"
    mkdir -p /etc/containers
    python3 - /etc/containers/containers.conf <<'EOF'
"""Add each setting under its table unless the file already sets that key (then it is left as the file has it)."""
import re, sys
from pathlib import Path

WANT = {
    "containers": {"default_ulimits": '["nofile=1024:1024", "nproc=4096:4096"]'},
    "engine": {"runtime": '"runc"', "cgroup_manager": '"cgroupfs"', "events_logger": '"file"'},
}
path = Path(sys.argv[1])
lines = path.read_text().splitlines() if path.exists() else []
table, present = None, set()
for line in lines:
    if m := re.match(r"\s*\[([^\]]+)\]", line):
        table = m.group(1).strip()
    elif m := re.match(r"\s*([A-Za-z_]+)\s*=", line):
        present.add((table, m.group(1)))
added = []
for table, settings in WANT.items():
    missing = [f"{k} = {v}" for k, v in settings.items() if (table, k) not in present]
    if not missing:
        continue
    added += missing
    heads = [i for i, line in enumerate(lines) if re.match(rf"\s*\[{table}\]\s*$", line)]
    if heads:
        lines[heads[0] + 1 : heads[0] + 1] = missing
    else:
        lines += ["", f"[{table}]", *missing]
if added:
    path.write_text("\n".join(lines) + "\n")
print("   ok: " + ("added " + "; ".join(added) if added else "already set"))
EOF
}

base_image() {
    step "base image $BASE"
    if podman image exists "$BASE" && [[ $(podman image inspect --format '{{index .Labels "vidret.standin"}}' "$BASE") != 1 ]]; then
        ok "present (the real image)"
        return
    fi
    if podman pull -q "$BASE" >"$WORK/pull.log" 2>&1; then
        ok "pulled"
        return
    fi
    echo "   could not pull $BASE: $(tail -n 1 "$WORK/pull.log")"
    if podman image exists "$BASE"; then
        ok "reusing the local stand-in built earlier (docker/standin_base.sh)"
    else
        echo "   building a local stand-in instead (docker/standin_base.sh: debootstrap bookworm + python3.11)"
        bash "$ROOT/docker/standin_base.sh" "$BASE"
    fi
}

build_image() {  # build_image IMAGE DOCKERFILE
    local image=$1 dockerfile=$2
    step "build $image (docker/$dockerfile)"
    local mounts=() dir
    if [[ $(podman image inspect --format '{{index .Labels "vidret.standin"}}' "$BASE") == 1 ]]; then
        # The stand-in carries the host's pip settings; the local wheel folders and indexes they name are
        # mounted read-only for the build (nothing of them ends up in the image).
        while read -r dir; do
            [[ -n $dir ]] && mounts+=(--volume "$dir:$dir:ro")
        done < <(python3 "$ROOT/docker/host_pip.py" dirs)
    fi
    # --format docker keeps the HEALTHCHECK (the OCI format has no field for it). A build needs about three times
    # the dependency layer's size while it runs (the container's files, the layer's diff, the layer).
    local free
    free=$(df --output=avail -B1G /var/lib/containers /var/tmp | tail -n +2 | sort -n | head -n 1)
    ((free >= 20)) || echo "   warning: only $free GB free under /var/lib/containers or /var/tmp; building the" \
        "CPU image's dependency layer (not needed when it is cached) takes about 20 GB"
    local old log=$WORK/build-${image//[:\/]/_}.log
    old=$(podman image inspect --format '{{.Id}}' "$image" 2>/dev/null || true)
    if ! podman build --pull=never --network=host --format docker --force-rm "${mounts[@]}" -t "$image" \
        -f "docker/$dockerfile" . >"$log" 2>&1; then
        tail -n 40 "$log"
        fail "podman build $image"
    fi
    ok "$(podman image inspect --format '{{.Size}}' "$image" | awk '{printf "%.2f GB", $1 / 1e9}')" \
        "($(grep -c -- '--> Using cache' "$log" || true) cached steps)"
    [[ $(podman image inspect --format '{{.Config.User}}' "$image") == vidret ]] || fail "$image does not run as vidret"
    if [[ -n $old && $old != $(podman image inspect --format '{{.Id}}' "$image") ]]; then
        # the image this build replaced: several GB that nothing uses any more (kept if a container still does)
        podman rmi "$old" >/dev/null 2>&1 && ok "removed the image it replaced (${old:0:12})"
    fi
}

check_api_image() {
    step "$API_IMAGE: no torch, and its size"
    local size
    size=$(podman image inspect --format '{{.Size}}' "$API_IMAGE")
    ((size < API_IMAGE_MAX_BYTES)) || fail "$API_IMAGE is $size bytes, over the goal of $API_IMAGE_MAX_BYTES"
    ok "$size bytes ($(awk -v s="$size" 'BEGIN {printf "%.2f GB", s / 1e9}'); the goal: under $API_IMAGE_MAX_BYTES)"
    podman run --rm --network=none "$API_IMAGE" python -c 'import torch' >/dev/null 2>&1 &&
        fail "$API_IMAGE can import torch"
    podman run --rm --network=none "$API_IMAGE" vidret train --train x.csv --out /tmp/x >"$WORK/notorch.log" 2>&1 &&
        fail "vidret train ran in $API_IMAGE"
    grep -q "^error: this command needs torch" "$WORK/notorch.log" ||
        fail "vidret train in $API_IMAGE: $(cat "$WORK/notorch.log")"
    ok "import torch fails; vidret train says: $(grep '^error: ' "$WORK/notorch.log" | cut -c1-100)..."
}

start_service() {
    step "podman's Docker-compatible API for docker-compose"
    podman system service --time=0 "unix://$SOCK" >"$WORK/service.log" 2>&1 &
    SERVICE_PID=$!
    for _ in $(seq 50); do [[ -S $SOCK ]] && break; sleep 0.2; done
    [[ -S $SOCK ]] || fail "podman system service did not open $SOCK"
    export DOCKER_HOST=unix://$SOCK
    local port key
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    key=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
    # Small settings: a 32-identity dataset of 8-frame 48 px videos, tiny3d for 2 epochs.
    cat >"$WORK/check.env" <<EOF
VIDRET_PORT=$port
VIDRET_API_KEY=$key
VIDRET_SYNTH_IDENTITIES=32
VIDRET_SYNTH_FRAMES=8
VIDRET_SYNTH_SIZE=48
VIDRET_CPU_EPOCHS=2
VIDRET_CPU_WORKERS=2
EOF
    unset "${!VIDRET_@}"  # the shell's VIDRET_* would win over the env file
    API=http://127.0.0.1:$port
    KEY=$key
    compose --profile demo --profile cpu down -v --remove-orphans >/dev/null 2>&1 || true  # an interrupted earlier run
    ok "DOCKER_HOST=$DOCKER_HOST, api on $API"
}

job() {  # job PROFILE SERVICE TIMEOUT_S: one `compose run --rm` job
    step "compose --profile $1 run --rm $2"
    if ! timeout "$3" docker-compose --ansi never -p "$PROJECT" -f "$ROOT/docker/compose.yaml" --env-file "$WORK/check.env" \
        --profile "$1" run --rm -T "$2" >"$WORK/$2.log" 2>&1; then
        tail -n 30 "$WORK/$2.log"
        fail "$2"
    fi
    ok "$(grep -v '^\s*$' "$WORK/$2.log" | tail -n 1 | sed -E 's/^.*━+ *[0-9/]+ *[0-9:]+ *//' | cut -c1-160)"
}

api_id() { compose ps -q api; }

http() {  # http METHOD PATH EXPECTED_STATUS [curl args...]: the body goes to $WORK/body
    local method=$1 path=$2 want=$3 got
    shift 3
    got=$(curl -sS -o "$WORK/body" -w '%{http_code}' -X "$method" "$@" "$API$path") || got=000
    [[ $got == "$want" ]] || fail "$method $path: HTTP $got, expected $want: $(head -c 300 "$WORK/body" 2>/dev/null)"
}

json() { python3 -c "import json, sys; d = json.load(open(sys.argv[1])); print($1)" "$WORK/body"; }

wait_ready() {  # wait until /ready answers 200 (the index and the model are loaded)
    local t=$(($(date +%s) + ${1:-240}))
    until [[ $(curl -s -o /dev/null -w '%{http_code}' "$API/ready") == 200 ]]; do
        (($(date +%s) < t)) || fail "the api was not ready within ${1:-240} s"
        sleep 1
    done
}

start_api() {
    step "compose up -d api ($API_IMAGE, the ONNX export), then its HEALTHCHECK"
    local t1=$SECONDS
    compose up -d api >"$WORK/up.log" 2>&1 || { cat "$WORK/up.log"; fail "compose up -d api"; }
    wait_ready
    ok "ready in $((SECONDS - t1)) s"
    http GET /v1/index 200
    [[ $(json 'd["model"]["runtime"], d["model"]["checkpoint"]') == "onnx model.onnx" ]] ||
        fail "the api does not serve the ONNX export: $(head -c 300 "$WORK/body")"
    ok "GET /v1/index: model.onnx, runtime onnx"
    local cid test
    cid=$(api_id)
    test=$(podman inspect --format '{{json .Config.Healthcheck.Test}}' "$cid")
    ok "health check: $test"
    podman healthcheck run "$cid" >"$WORK/health.log" 2>&1 || { cat "$WORK/health.log"; fail "podman healthcheck run: $(cat "$WORK/health.log")"; }
    ok "podman healthcheck run: exit 0 $(tr -d '\n' <"$WORK/health.log")"
    [[ $(podman inspect --format '{{.State.Health.Status}}' "$cid") == healthy ]] || fail "the container is not healthy"
    ok "container state: healthy"
}

add_video() {  # add_video ID: add a gallery video under a new id, with the API key
    http POST /v1/videos 201 -H "Authorization: Bearer $KEY" -F "file=@$WORK/query.mp4" -F "id=$1" -F label=check
}

api_checks() {
    step "API: search by id, search by uploaded video, thumbnail, evaluate, add with the key, delete"
    http GET '/v1/videos?limit=1' 200
    local id
    id=$(json 'd["videos"][0]["id"]')
    http POST /v1/search 200 -H 'Content-Type: application/json' -d "{\"id\": \"$id\", \"k\": 5}"
    ok "search by id $id: $(json 'len(d["results"])') results, nearest $(json 'd["results"][0]["id"]')"
    http GET "/v1/videos/$id/video" 200
    mv "$WORK/body" "$WORK/query.mp4"
    http POST /v1/search/video 200 -F "file=@$WORK/query.mp4" -F k=5
    [[ $(json 'd["results"][0]["id"]') == "$id" ]] || fail "the upload of $id did not find itself first: $(head -c 300 "$WORK/body")"
    ok "search by upload: finds $id first, score $(json 'round(d["results"][0]["score"], 3)')"
    http GET "/v1/videos/$id/thumbnail" 200
    ok "thumbnail: $(wc -c <"$WORK/body") bytes of JPEG"
    http POST /v1/evaluate 200 -H 'Content-Type: application/json' -d '{"all": true, "rerank": true}'
    ok "evaluate (re-ranked) over the index: mAP $(json 'round(d["mAP"], 3)') on $(json 'd["num_queries"]') queries"
    http POST /v1/videos 401 -F "file=@$WORK/query.mp4" -F id=check-nokey
    ok "add without the key: 401"
    add_video check-added
    ok "add with the key: 201"
    http DELETE /v1/videos/check-added 204 -H "Authorization: Bearer $KEY"
    http GET /v1/videos/check-added 404
    ok "delete: 204, then 404"
    add_video check-kept
}

restart_checks() {
    step "compose restart api: the added video is still there"
    compose restart api >"$WORK/restart.log" 2>&1 || { cat "$WORK/restart.log"; fail "compose restart api"; }
    wait_ready
    http GET /v1/videos/check-kept 200
    ok "check-kept survived the restart"

    step "SIGKILL of the server right after a 201 add: the restart policy brings it back"
    local cid pid restarts
    cid=$(api_id)
    pid=$(podman inspect --format '{{.State.Pid}}' "$cid")
    restarts=$(podman inspect --format '{{.RestartCount}}' "$cid")
    add_video check-killed
    kill -9 "$pid"
    ok "added check-killed (201), then kill -9 $pid (the server, PID from podman inspect)"
    local t=$(($(date +%s) + 120))
    until [[ $(podman inspect --format '{{.State.Running}} {{.State.Pid}}' "$cid") == "true "* &&
        $(podman inspect --format '{{.State.Pid}}' "$cid") != "$pid" ]]; do
        (($(date +%s) < t)) || fail "the container was not restarted within 120 s"
        sleep 1
    done
    wait_ready
    ok "restarted by its policy (restart count $restarts -> $(podman inspect --format '{{.RestartCount}}' "$cid"))"
    http GET /v1/videos/check-killed 200
    ok "check-killed survived the SIGKILL"
    http GET /v1/videos/check-kept 200
    podman healthcheck run "$cid" >/dev/null 2>&1 || fail "podman healthcheck run after the restart"
    ok "healthy again"
}

cold_start() {
    step "VIDRET_CHECK_COLD=1: removing $IMAGE, $API_IMAGE, the stand-in base and dangling layers"
    podman rmi -f "$IMAGE" "$API_IMAGE" >/dev/null 2>&1 || true
    if podman image exists "$BASE" &&
        [[ $(podman image inspect --format '{{index .Labels "vidret.standin"}}' "$BASE") == 1 ]]; then
        podman rmi -f "$BASE" >/dev/null
    fi
    podman image prune -f >/dev/null
    ok "$(podman images -q | wc -l) images left"
}

install_tools
configure_podman
[[ ${VIDRET_CHECK_COLD:-0} == 1 ]] && cold_start
base_image
build_image "$IMAGE" Dockerfile.cpu
build_image "$API_IMAGE" Dockerfile.api
check_api_image
start_service
job demo synth 900
job cpu train-cpu 1800
job cpu embed-cpu 900
job cpu index 600
job cpu export 600
start_api
api_checks
restart_checks
step "compose down -v"
if [[ ${VIDRET_CHECK_KEEP:-0} != 1 ]]; then
    compose --profile demo --profile cpu down -v --remove-orphans >"$WORK/down.log" 2>&1 ||
        { cat "$WORK/down.log"; fail "compose down -v"; }
    [[ -z $(podman volume ls -q --filter "name=${PROJECT}_vidret-data") ]] || fail "the volume is still there"
    DOWN_DONE=1
    ok "containers, network and volume removed"
fi
