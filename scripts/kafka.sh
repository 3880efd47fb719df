#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft: broker and controller in one JVM) on loopback, from the
# Maven Central jars named in deploy/kafka/pom.xml. Used by the integration tests and the local stack.
#
#   scripts/kafka.sh fetch                      resolve the broker's jars into the cache (idempotent)
#   scripts/kafka.sh start [--port P] [--controller-port C] [--data-dir D] [--partitions N] [--timeout S]
#                          [--security DIR [--mtls-port M]]
#                                               format D if new, start the broker in the background,
#                                               return once it answers a metadata request
#                                               (--security: a SASL_SSL listener and a TLS controller listener
#                                               set up by DIR, which devtools/kafka_broker.py prepares; the
#                                               script then waits for the port only: the caller logs in;
#                                               --mtls-port: also a listener taking client certificates)
#   scripts/kafka.sh stop [--data-dir D]        stop the broker started in D; return once its ports are free
#   scripts/kafka.sh status [--data-dir D]      say whether it runs (exit 0) or not (exit 3)
#   scripts/kafka.sh libs                       print the folder of the jars (after fetch)
#
# Defaults: port 19092, controller port 19093, data dir .neuroflow/kafka at the repository root.
# Cache: ${NEUROFLOW_CACHE:-$HOME/.cache/neuroflow}/kafka/<version>/libs, Maven's own repository
# beside it in .../kafka/m2. Needs java (17+) and, for fetch, mvn and access to Maven Central.
# Environment: KAFKA_HEAP (default -Xmx512m -Xms128m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
POM="$ROOT/deploy/kafka/pom.xml"
TEMPLATE="$ROOT/deploy/kafka/server.properties.template"
LOG_CONFIG="$ROOT/deploy/kafka/log4j2.yaml"
PROBE="$ROOT/scripts/kafka_probe.py"
VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
CACHE="${NEUROFLOW_CACHE:-$HOME/.cache/neuroflow}/kafka"
LIBS="$CACHE/$VERSION/libs"
HOST=127.0.0.1

PORT=19092
CONTROLLER_PORT=19093
DATA_DIR="$ROOT/.neuroflow/kafka"
PARTITIONS=1
TIMEOUT_S=60
SECURITY_DIR=""
MTLS_PORT=""

die() { echo "kafka.sh: $*" >&2; exit 1; }
now_ms() { echo $(($(date +%s%N) / 1000000)); }

parse_options() {
    while [ $# -gt 0 ]; do
        case "$1" in
            --port) PORT="$2"; shift 2 ;;
            --controller-port) CONTROLLER_PORT="$2"; shift 2 ;;
            --data-dir) DATA_DIR="$2"; shift 2 ;;
            --partitions) PARTITIONS="$2"; shift 2 ;;
            --timeout) TIMEOUT_S="$2"; shift 2 ;;
            --security) SECURITY_DIR="$(cd "$2" && pwd)"; shift 2 ;;
            --mtls-port) MTLS_PORT="$2"; shift 2 ;;
            *) die "unknown option $1" ;;
        esac
    done
    # Kafka's own refusal of a shared port is a stack trace from its storage tool.
    [ "$PORT" != "$CONTROLLER_PORT" ] || die "--port and --controller-port are both $PORT: give each listener its own"
    if [ -n "$MTLS_PORT" ] && { [ "$MTLS_PORT" = "$PORT" ] || [ "$MTLS_PORT" = "$CONTROLLER_PORT" ]; }; then
        die "--mtls-port $MTLS_PORT is already the client or controller port"
    fi
    mkdir -p "$DATA_DIR"
    DATA_DIR="$(cd "$DATA_DIR" && pwd)"
    PID_FILE="$DATA_DIR/kafka.pid"
    PORTS_FILE="$DATA_DIR/kafka.ports"
}

# True when something accepts TCP connections on HOST:$1.
port_open() { (exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null; }

# The PID of the broker started in DATA_DIR, printed only while that process is alive and is ours.
running_pid() {
    [ -f "$PID_FILE" ] || return 1
    local pid
    pid="$(cat "$PID_FILE")"
    kill -0 "$pid" 2>/dev/null || return 1
    # A recycled PID belongs to another program: ours runs kafka.Kafka on this data dir's config.
    tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "kafka.Kafka $DATA_DIR/server.properties" || return 1
    echo "$pid"
}

fetch() {
    local stamp="$LIBS/.pom.sha256" want
    want="$(sha256sum "$POM" | cut -d' ' -f1)"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        return 0
    fi
    command -v mvn >/dev/null || die "mvn is needed to fetch the Kafka jars (Debian: apt-get install maven)"
    echo "kafka.sh: fetching Apache Kafka $VERSION jars into $LIBS" >&2
    # Resolve into a fresh folder and move it in place whole, so an interrupted fetch leaves no half set.
    local staging="$CACHE/$VERSION/libs.partial.$$"
    rm -rf "$staging"
    local maven_log="$CACHE/$VERSION/fetch.log"
    mkdir -p "$CACHE/$VERSION"
    mvn -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime \
        -DoutputDirectory="$staging" -Dmaven.repo.local="$CACHE/m2" >"$maven_log" 2>&1 \
        || die "could not resolve the Kafka jars from Maven Central; the end of $maven_log:
$(grep -E 'ERROR|BUILD' "$maven_log" | tail -15)"
    echo "$want" >"$staging/.pom.sha256"
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
        rm -rf "$staging"  # a fetch running beside this one finished first
        return 0
    fi
    rm -rf "$LIBS"
    mv -T "$staging" "$LIBS" 2>/dev/null || { rm -rf "$staging"; [ -f "$stamp" ] || die "could not move the jars into $LIBS"; }
}

# Kafka cluster ids are 16 random bytes in URL-safe base64 without padding (what StorageTool random-uuid
# prints); made here to spare a JVM start.
new_cluster_id() { head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n'; }

# The java command line of every Kafka tool run here, followed by the main class and its arguments.
java_args() {
    local heap="${KAFKA_HEAP:--Xmx512m -Xms128m}"
    # shellcheck disable=SC2206  # KAFKA_HEAP holds several options on purpose
    JAVA_ARGS=(java $heap -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true
        -Dlog4j2.configurationFile="$LOG_CONFIG" -Dkafka.logs.dir="$DATA_DIR/logs" -cp "$LIBS/*" "$@")
}

start() {
    parse_options "$@"
    fetch
    if pid="$(running_pid)"; then
        die "a broker already runs from $DATA_DIR (pid $pid); stop it first"
    fi
    [ -z "$MTLS_PORT" ] || [ -n "$SECURITY_DIR" ] || die "--mtls-port needs --security"
    for port in "$PORT" "$CONTROLLER_PORT" $MTLS_PORT; do
        port_open "$port" && die "port $port on $HOST is already in use"
    done
    local data="$DATA_DIR/data"
    mkdir -p "$data" "$DATA_DIR/logs"
    local client=PLAINTEXT controller=PLAINTEXT extra_listeners="" extra_protocols=""
    if [ -n "$SECURITY_DIR" ]; then
        client=SASL_SSL controller=SSL
    fi
    if [ -n "$MTLS_PORT" ]; then
        extra_listeners=",MTLS://$HOST:$MTLS_PORT" extra_protocols=",MTLS:SSL"
    fi
    # The settings name passwords when secured (the broker's own login): readable by the owner only.
    (umask 077; sed -e "s|@PORT@|$PORT|g" -e "s|@CONTROLLER_PORT@|$CONTROLLER_PORT|g" \
        -e "s|@LOG_DIRS@|$data|g" -e "s|@NUM_PARTITIONS@|$PARTITIONS|g" \
        -e "s|@CLIENT_PROTOCOL@|$client|g" -e "s|@CONTROLLER_PROTOCOL@|$controller|g" \
        -e "s|@EXTRA_LISTENERS@|$extra_listeners|g" -e "s|@EXTRA_PROTOCOLS@|$extra_protocols|g" \
        "$TEMPLATE" >"$DATA_DIR/server.properties"
     if [ -n "$SECURITY_DIR" ]; then cat "$SECURITY_DIR/broker.properties" >>"$DATA_DIR/server.properties"; fi)
    if [ ! -f "$data/meta.properties" ]; then
        local cluster_id
        # Given as --cluster-id=ID: an id may start with "-", which the tool would read as an option.
        cluster_id="$(new_cluster_id)"
        if [ -n "$SECURITY_DIR" ]; then
            # The SCRAM users (--add-scram, with their passwords) reach the JVM in an argument file of the
            # owner's, not on a command line every user of the host can read in /proc. The java launcher
            # expands @files only before the main class, so the file holds the main class and its arguments.
            local argfile="$DATA_DIR/format.args"
            (umask 077; { printf '%s\n' kafka.tools.StorageTool format "--cluster-id=$cluster_id" \
                --config "\"$DATA_DIR/server.properties\""; cat "$SECURITY_DIR/scram.args"; } >"$argfile")
            java_args "@$argfile"
        else
            java_args kafka.tools.StorageTool format "--cluster-id=$cluster_id" --config "$DATA_DIR/server.properties"
        fi
        # Stack frames left out of the message: the cause is the exception line above them.
        "${JAVA_ARGS[@]}" >"$DATA_DIR/logs/format.out" 2>&1 \
            || { rm -f "$DATA_DIR/format.args"; die "formatting $data failed: $(grep -vE '^[[:space:]]+at ' "$DATA_DIR/logs/format.out" | tail -5)"; }
        rm -f "$DATA_DIR/format.args"
    fi
    local started
    started="$(now_ms)"
    java_args kafka.Kafka "$DATA_DIR/server.properties"
    # setsid: the broker outlives this script and is not hit by the terminal's Ctrl-C meant for a test
    # run. This script has no job control, so its background child leads no process group and setsid
    # execs java in place: $! is the broker's PID.
    setsid "${JAVA_ARGS[@]}" >"$DATA_DIR/logs/kafka.out" 2>&1 </dev/null &
    local pid=$!
    echo "$pid" >"$PID_FILE"
    echo "$PORT $CONTROLLER_PORT${MTLS_PORT:+ $MTLS_PORT}" >"$PORTS_FILE"
    local deadline=$((started + TIMEOUT_S * 1000)) problem=""
    while [ "$(now_ms)" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null \
            || die "the broker exited while starting; last lines of $DATA_DIR/logs/kafka.out:
$(tail -20 "$DATA_DIR/logs/kafka.out")"
        # The probe speaks plain Kafka; a secured broker is probed by its caller, who has the credentials.
        if port_open "$PORT" && { [ -n "$SECURITY_DIR" ] || problem="$(python3 "$PROBE" "$HOST" "$PORT" 2>&1)"; }; then
            echo "kafka.sh: Kafka $VERSION ready at $HOST:$PORT (pid $pid, started in $(($(now_ms) - started)) ms)" >&2
            echo "$HOST:$PORT"
            return 0
        fi
        sleep 0.2
    done
    kill "$pid" 2>/dev/null || true
    die "the broker did not answer a metadata request on $HOST:$PORT within $TIMEOUT_S s (${problem:-port closed});
see $DATA_DIR/logs/server.log"
}

stop() {
    parse_options "$@"
    local pid ports
    ports="$(cat "$PORTS_FILE" 2>/dev/null || echo "$PORT $CONTROLLER_PORT")"
    if pid="$(running_pid)"; then
        kill -TERM "$pid"
        # A controlled shutdown of one node takes a few seconds; after 30 s it is killed.
        local waited=0
        while kill -0 "$pid" 2>/dev/null; do
            if [ "$waited" -ge 300 ]; then
                echo "kafka.sh: broker $pid did not stop in 30 s; killing it" >&2
                kill -KILL "$pid" 2>/dev/null || true
            fi
            sleep 0.1
            waited=$((waited + 1))
        done
    fi
    rm -f "$PID_FILE"
    for port in $ports; do
        local tries=0
        while port_open "$port"; do
            [ "$tries" -lt 100 ] || die "port $port is still in use after the broker stopped"
            sleep 0.1
            tries=$((tries + 1))
        done
    done
}

status() {
    parse_options "$@"
    local pid ports
    ports="$(cat "$PORTS_FILE" 2>/dev/null || echo "$PORT $CONTROLLER_PORT")"
    if pid="$(running_pid)"; then
        set -- $ports
        if python3 "$PROBE" "$HOST" "$1" 2>/dev/null; then
            echo "running: Kafka $VERSION pid $pid, bootstrap $HOST:$1, controller port $2, data $DATA_DIR"
        else
            echo "starting or unhealthy: pid $pid does not answer metadata on $HOST:$1, data $DATA_DIR"
        fi
        return 0
    fi
    echo "not running (data $DATA_DIR)"
    return 3
}

command="${1:-}"
[ $# -gt 0 ] && shift
case "$command" in
    fetch) fetch ;;
    libs) fetch; echo "$LIBS" ;;
    start) start "$@" ;;
    stop) stop "$@" ;;
    status) status "$@" ;;
    *) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
