#!/usr/bin/env bash
# What a connection's TLS handshake costs the server (issue 20): every operation of ratchet-bench's
# `connect` scenario is a new connection carrying one health Check. Four cases, one server each
# (release build, embedded SQLite store, which a health Check does not touch):
#   plaintext                  no TLS: what accepting and serving a connection costs by itself
#   tls-full                   server certificate only, every handshake full (clients keep no session)
#   tls-resumed                server certificate only, clients resume the session they kept
#   mtls-full                  client certificates asked for; clients offer their sessions, and
#                              the server (issue 20) resumes none, so every handshake is full
# Certificates: ECDSA P-256 (what SPIRE and cert-manager issue by default), made here with openssl.
#
#   bench/tls-handshakes.sh             K=4, 10 s each (after 2 s of warm-up)
#   K=1 DURATION=5s bench/tls-handshakes.sh
set -euo pipefail
cd "$(dirname "$0")/.."
: "${K:=4}" "${DURATION:=10s}" "${WARMUP:=2s}" "${PROFILE:=release}"
if [ "$PROFILE" = release ]; then
    cargo build --locked --release -p ratchet -p ratchet-bench --bins
else
    # --all-targets: the feature set of the test build, so nothing rebuilds.
    cargo build --locked --workspace --all-targets
fi
server_bin="${CARGO_TARGET_DIR:-target}/$PROFILE/ratchet"
bench_bin="${CARGO_TARGET_DIR:-target}/$PROFILE/ratchet-bench"
scratch=$(mktemp -d /tmp/ratchet-tls-bench.XXXXXX)
server_pid=""
cleanup() {
    [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
    rm -rf "$scratch"
}
trap cleanup EXIT

certificate() { # name issuer-name usage san
    local name=$1 issuer=$2 usage=$3 san=$4
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
        -keyout "$scratch/$name.key" -out "$scratch/$name.csr" 2>/dev/null
    openssl x509 -req -in "$scratch/$name.csr" -CA "$scratch/$issuer.pem" -CAkey "$scratch/$issuer.key" \
        -CAcreateserial -days 2 -out "$scratch/$name.pem" \
        -extfile <(printf 'basicConstraints=CA:FALSE\nextendedKeyUsage=%s\nsubjectAltName=%s\n' "$usage" "$san") 2>/dev/null
    chmod 600 "$scratch/$name.key"
}
for ca in server-ca client-ca; do
    openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$ca" -days 2 \
        -keyout "$scratch/$ca.key" -out "$scratch/$ca.pem" 2>/dev/null
done
certificate server server-ca serverAuth "DNS:localhost,IP:127.0.0.1"
certificate client client-ca clientAuth "URI:spiffe://bench.test/ns/bench/sa/client"

results="bench/results/$(date -u +%Y%m%dT%H%M%SZ)-tls-handshakes.jsonl"
mkdir -p bench/results
failed=0

run() { # label server-env... -- bench-args...
    local label=$1
    shift
    local env=()
    while [ "$1" != -- ]; do env+=("$1"); shift; done
    shift
    local port
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rm -rf "$scratch/data"
    mkdir -p "$scratch/data"
    env -u DATABASE_URL RATCHET_LISTEN="127.0.0.1:$port" RATCHET_DATA_DIR="$scratch/data" RUST_LOG=warn \
        RATCHET_HTTP_LISTEN=off "${env[@]}" "$server_bin" serve 2>"$scratch/server.log" &
    server_pid=$!
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
        sleep 0.1
    done
    sleep 1
    "$bench_bin" --addr "http://127.0.0.1:$port" --scenario connect -k "$K" --duration "$DURATION" \
        --warmup "$WARMUP" --server-pid "$server_pid" --label "$label" "$@" >>"$results" || failed=1
    kill "$server_pid"
    wait "$server_pid" || true
    server_pid=""
}

tls=(RATCHET_TLS_CERT="$scratch/server.pem" RATCHET_TLS_KEY="$scratch/server.key")
run plaintext --
run tls-full "${tls[@]}" -- --tls-ca "$scratch/server-ca.pem"
run tls-resumed "${tls[@]}" -- --tls-ca "$scratch/server-ca.pem" --tls-resume
run mtls-full "${tls[@]}" RATCHET_TLS_CLIENT_CA="$scratch/client-ca.pem" -- --tls-ca "$scratch/server-ca.pem" \
    --tls-client-cert "$scratch/client.pem" --tls-client-key "$scratch/client.key" --tls-resume

python3 - "$results" <<'PY'
import json, sys
print(f"{'case':<12} {'conn/s':>8} {'p50 µs':>8} {'p99 µs':>8} {'server CPU/conn':>16} {'full':>7} {'resumed':>8}")
for line in open(sys.argv[1]):
    r = json.loads(line)
    h = r.get("tls_handshakes") or {}
    print(f"{r['label']:<12} {r['ops_per_s']:>8.0f} {r['latency_us']['p50']:>8} {r['latency_us']['p99']:>8} "
          f"{str(r['server_cpu_us_per_op']) + ' µs':>16} {h.get('full', '-'):>7} {h.get('resumed', '-'):>8}")
PY
echo "raw results: $results" >&2
exit $failed
