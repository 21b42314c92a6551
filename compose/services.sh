#!/usr/bin/env bash
# compose/services.sh — the real-services stack for integration tests, without
# Docker: Mosquitto (Debian package), Apache Kafka in KRaft mode (jars from
# Maven Central, run on the machine's Java 17) and MinIO (built with
# `go install`), plus a Python virtualenv with duckdb and pyarrow that tests
# use to read the Parquet files back.
#
#   compose/services.sh install            fetch/build everything once, cached under .cache/
#   compose/services.sh start [SERVICE...] start on 127.0.0.1 with fresh data, wait until healthy
#   compose/services.sh stop [SERVICE...]  TERM, wait, KILL; safe to repeat
#   compose/services.sh restart [SERVICE...]
#   compose/services.sh status [SERVICE...] exit 0 only if all named services run
#   compose/services.sh env                the FLEET_TEST_* export lines (internal/testenv)
#
# SERVICE is mosquitto, kafka or minio; none means all three. Ports are
# 11883 (MQTT), 19092-19093 (Kafka), 19000-19001 (MinIO), each moved by
# FLEET_SERVICES_PORT_OFFSET when it is set. Every start
# wipes that service's state under .cache/run/ so each test run begins clean;
# a service that is already running is stopped first. Logs stay in
# .cache/run/SERVICE/ until the next start.
#
# FLEET_SERVICES_RUN_DIR moves .cache/run (a test's own stack beside the
# shared one); FLEET_SERVICES_KEEP_DATA=1 makes start and restart keep the
# named services' data (a broker restart under load, say): Mosquitto runs
# with persistence, so its sessions and retained messages survive.
#
# Use: compose/services.sh install && compose/services.sh start &&
#      eval "$(compose/services.sh env)" && go test ./...
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
COMPOSE=$REPO/compose
CACHE=$REPO/.cache
RUN=${FLEET_SERVICES_RUN_DIR:-$CACHE/run}
KEEP_DATA=${FLEET_SERVICES_KEEP_DATA:-}

# Pins. Kafka: the newest 4.x release on Maven Central (compose/kafka/pom.xml
# takes it as -Dkafka.version). MinIO has no semver tags, so the Go proxy
# serves pseudo-versions; this one is the newest that builds with our Go.
KAFKA_VERSION=4.4.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c
PY_PACKAGES=(duckdb==2.0.0 pyarrow==26.0.1 cantools==45.1.0)

HOST=127.0.0.1
# FLEET_SERVICES_PORT_OFFSET moves every port, so that two checkouts (or
# worktrees) on one machine can each run their own stack.
PORT_OFFSET=${FLEET_SERVICES_PORT_OFFSET:-0}
[[ $PORT_OFFSET =~ ^[0-9]{1,4}$ ]] || { echo "services: error: FLEET_SERVICES_PORT_OFFSET=$PORT_OFFSET is not a number below 10000" >&2; exit 2; }
MQTT_PORT=$((11883 + PORT_OFFSET))
KAFKA_PORT=$((19092 + PORT_OFFSET))
KAFKA_CONTROLLER_PORT=$((19093 + PORT_OFFSET))
MINIO_PORT=$((19000 + PORT_OFFSET))
MINIO_CONSOLE_PORT=$((19001 + PORT_OFFSET))
MINIO_USER=fleetminio
MINIO_PASSWORD=fleetminio-secret
KAFKA_HEAP=768m

SERVICES=(mosquitto kafka minio)
KAFKA_LIBS=$CACHE/kafka/libs
KAFKA_PROBE=$CACHE/kafka/probe
MINIO_BIN=$CACHE/bin/minio
PY=$CACHE/py/bin/python

# Seconds to wait for health after a start, and for exit after SIGTERM.
declare -A START_DEADLINE=([mosquitto]=15 [kafka]=90 [minio]=45)
declare -A STOP_DEADLINE=([mosquitto]=10 [kafka]=45 [minio]=20)
declare -A PORTS=(
	[mosquitto]="$MQTT_PORT"
	[kafka]="$KAFKA_PORT $KAFKA_CONTROLLER_PORT"
	[minio]="$MINIO_PORT $MINIO_CONSOLE_PORT"
)

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# ---------------------------------------------------------------- helpers

# lock serialises install/start/stop of this checkout. Children must not
# inherit fd 9 (launch closes it), or a daemon would hold the lock forever.
lock() {
	mkdir -p "$CACHE" "$(dirname "$RUN")"
	exec 9>"$RUN.lock"
	if ! flock -w 300 9; then
		die "another compose/services.sh is still running (lock $RUN.lock)"
	fi
}

as_root() {
	if [[ $(id -u) -eq 0 ]]; then
		"$@"
	elif command -v sudo >/dev/null; then
		sudo "$@"
	else
		die "need root (or sudo) to run: $*"
	fi
}

mosquitto_bin() {
	command -v mosquitto 2>/dev/null || { [[ -x /usr/sbin/mosquitto ]] && echo /usr/sbin/mosquitto; } || true
}

# port_open PORT: something accepts TCP connections on HOST:PORT.
port_open() {
	(exec 3<>"/dev/tcp/$HOST/$1") 2>/dev/null
}

# port_owner PORT: "pid N (cmd)" of the process listening on PORT, if it can be found.
port_owner() {
	local hex inode fd pid
	hex=$(printf '%04X' "$1")
	inode=$(awk -v p=":$hex" '$4 == "0A" && substr($2, length($2) - 4) == p { print $10; exit }' \
		/proc/net/tcp /proc/net/tcp6 2>/dev/null || true)
	[[ -n $inode && $inode != 0 ]] || return 0
	fd=$(find /proc/[0-9]*/fd -lname "socket:\[$inode\]" -print -quit 2>/dev/null || true)
	[[ -n $fd ]] || return 0
	pid=${fd#/proc/}
	pid=${pid%%/*}
	printf 'pid %s (%s)' "$pid" "$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | cut -c1-120)"
}

# http_status PORT PATH: the HTTP status code of GET PATH, or 000. Plain bash,
# so a fresh machine needs no curl.
http_status() {
	local line
	line=$(
		exec 2>/dev/null
		exec 3<>"/dev/tcp/$HOST/$1" || exit 0
		printf 'GET %s HTTP/1.0\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$2" "$HOST" "$1" >&3
		IFS= read -r -t 3 l <&3 || true
		printf '%s' "$l"
	) || true
	line=${line#HTTP/* }
	printf '%s\n' "${line:0:3}" | grep -E '^[0-9]{3}$' || echo 000
}

pidfile() { echo "$RUN/$1/pid"; }

# running SVC: prints the PID if SVC runs from this checkout. The process's
# command line must name its own folder under $RUN, so a recycled PID or
# another checkout's stack is never mistaken for ours.
running() {
	local pid state
	[[ -f $(pidfile "$1") ]] || return 1
	pid=$(<"$(pidfile "$1")")
	[[ $pid =~ ^[0-9]+$ ]] || return 1
	state=$(awk '{ print $3 }' "/proc/$pid/stat" 2>/dev/null) || return 1
	[[ -n $state && $state != Z && $state != X ]] || return 1
	tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -qF "$RUN/$1/" || return 1
	echo "$pid"
}

# show_log SVC: the tail of whatever the service wrote, for a failed start.
show_log() {
	local f
	for f in "$RUN/$1"/*.log "$RUN/$1"/*.out "$RUN/$1"/logs/*.log; do
		[[ -s $f ]] || continue
		printf '\n----- last lines of %s -----\n' "$f" >&2
		tail -n 40 "$f" >&2
	done
	printf -- '-----\n' >&2
}

# launch SVC LOGFILE CMD...: runs CMD as a daemon in its own session and
# records its PID. setsid execs (bash's background child is never a process
# group leader here), so $! is the service's own PID.
launch() {
	local svc=$1 log=$2
	shift 2
	setsid "$@" </dev/null >"$log" 2>&1 9>&- &
	echo $! >"$(pidfile "$svc")"
}

check_ports() {
	local port owner
	for port in ${PORTS[$1]}; do
		if port_open "$port"; then
			owner=$(port_owner "$port")
			die "$1 needs $HOST:$port, but it is already in use${owner:+ by $owner}; stop that process (another checkout's stack? run its compose/services.sh stop)"
		fi
	done
}

# installed SVC: what `start SVC` needs is there.
installed() {
	case $1 in
	mosquitto) [[ -n $(mosquitto_bin) ]] ;;
	kafka) [[ -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar && -f $KAFKA_PROBE/KafkaProbe.class ]] ;;
	minio) [[ -x $MINIO_BIN && -f $CACHE/bin/minio.version && $(<"$CACHE/bin/minio.version") == "$MINIO_VERSION" ]] ;;
	esac
}

# pick [SERVICE...]: sets SEL to the named services, or all of them.
pick() {
	local s
	SEL=("$@")
	[[ $# -gt 0 ]] || SEL=("${SERVICES[@]}")
	for s in "${SEL[@]}"; do
		case $s in
		mosquitto | kafka | minio) ;;
		*) die "unknown service '$s' (want mosquitto, kafka or minio)" ;;
		esac
	done
}

# ---------------------------------------------------------------- install

install_apt_packages() {
	local pkgs=()
	[[ -n $(mosquitto_bin) ]] || pkgs+=(mosquitto)
	command -v mosquitto_sub >/dev/null || pkgs+=(mosquitto-clients)
	command -v javac >/dev/null || pkgs+=(openjdk-17-jdk-headless) # builds the Kafka probe
	command -v chromium >/dev/null || pkgs+=(chromium)               # the live-location dashboard's browser test
	if ! python3 -c 'import venv, ensurepip' 2>/dev/null && ! "$PY" -c 'import duckdb, pyarrow, cantools' 2>/dev/null; then
		pkgs+=(python3-venv)
	fi
	if [[ ${#pkgs[@]} -eq 0 ]]; then
		say "apt: mosquitto, mosquitto-clients, javac, chromium present"
		return
	fi
	say "apt: installing ${pkgs[*]}"
	as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
	# policy-rc.d answers 101 while we install, so the package's init script
	# does not start a system mosquitto on 0.0.0.0:1883 on machines that have
	# an init system; this stack runs its own mosquitto instead.
	local policy=/usr/sbin/policy-rc.d added=""
	if [[ ! -e $policy ]]; then
		as_root sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
		added=1
	fi
	local rc=0
	as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null || rc=$?
	[[ -z $added ]] || as_root rm -f "$policy"
	[[ $rc -eq 0 ]] || die "apt-get install ${pkgs[*]} failed"
	[[ -n $(mosquitto_bin) ]] || die "mosquitto is still not installed"
}

install_kafka() {
	local want have=""
	want="kafka=$KAFKA_VERSION pom=$(sha256sum <"$COMPOSE/kafka/pom.xml" | cut -c1-16) probe=$(sha256sum <"$COMPOSE/kafka/KafkaProbe.java" | cut -c1-16)"
	[[ -f $CACHE/kafka/stamp ]] && have=$(<"$CACHE/kafka/stamp")
	if [[ $have == "$want" && -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar && -f $KAFKA_PROBE/KafkaProbe.class ]]; then
		echo "kafka $KAFKA_VERSION: cached"
		return
	fi
	rm -rf "$KAFKA_LIBS" "$KAFKA_PROBE" "$CACHE/kafka/stamp"
	mkdir -p "$KAFKA_LIBS" "$KAFKA_PROBE"
	mvn -q -B -Dstyle.color=never -f "$COMPOSE/kafka/pom.xml" \
		dependency:copy-dependencies -Dkafka.version="$KAFKA_VERSION" \
		-DoutputDirectory="$KAFKA_LIBS" -DincludeScope=runtime 2>&1 |
		sed 's/\x1b\[[0-9;]*m//g' # Maven 3.8 prints colour resets even with -B
	[[ -f $KAFKA_LIBS/kafka_2.13-$KAFKA_VERSION.jar ]] || { echo "maven did not fetch kafka_2.13-$KAFKA_VERSION.jar"; return 1; }
	javac -nowarn -d "$KAFKA_PROBE" -cp "$KAFKA_LIBS/*" "$COMPOSE/kafka/KafkaProbe.java"
	echo "$want" >"$CACHE/kafka/stamp"
	echo "kafka $KAFKA_VERSION: $(find "$KAFKA_LIBS" -name "*.jar" | wc -l) jars in $KAFKA_LIBS"
}

install_minio() {
	local stamp=$CACHE/bin/minio.version
	if [[ -x $MINIO_BIN && -f $stamp && $(<"$stamp") == "$MINIO_VERSION" ]]; then
		echo "minio $MINIO_VERSION: cached"
		return
	fi
	rm -f "$stamp"
	mkdir -p "$CACHE/bin"
	# Module mode, not this repo's go.mod: `go install m@v` ignores it.
	GOBIN=$CACHE/bin CGO_ENABLED=0 GOFLAGS=-buildvcs=false \
		go install -trimpath -ldflags='-s -w' "github.com/minio/minio@$MINIO_VERSION"
	echo "$MINIO_VERSION" >"$stamp"
	echo "minio $MINIO_VERSION: built $MINIO_BIN"
}

install_python() {
	local stamp=$CACHE/py/fleet-packages
	if [[ -x $PY && -f $stamp && $(<"$stamp") == "${PY_PACKAGES[*]}" ]] && "$PY" -c 'import duckdb, pyarrow, cantools' 2>/dev/null; then
		echo "python venv: cached"
		return
	fi
	rm -rf "$CACHE/py"
	python3 -m venv "$CACHE/py"
	"$PY" -m pip install -q --disable-pip-version-check --no-input "${PY_PACKAGES[@]}"
	"$PY" -c 'import duckdb, pyarrow, cantools'
	echo "${PY_PACKAGES[*]}" >"$stamp"
	echo "python venv: $("$PY" -c 'import sys, duckdb, pyarrow; print("python", sys.version.split()[0], "duckdb", duckdb.__version__, "pyarrow", pyarrow.__version__)')"
}

cmd_install() {
	local t0=$SECONDS step failed=""
	command -v go >/dev/null || die "go is not on PATH"
	command -v java >/dev/null || die "java (17) is not on PATH"
	command -v mvn >/dev/null || die "mvn (Maven) is not on PATH"
	command -v python3 >/dev/null || die "python3 is not on PATH"
	lock
	install_apt_packages
	# The rest is independent: fetch, build and pip in parallel.
	mkdir -p "$CACHE/logs"
	declare -A pids=()
	for step in kafka minio python; do
		"install_$step" >"$CACHE/logs/install-$step.log" 2>&1 9>&- &
		pids[$step]=$!
	done
	for step in kafka minio python; do
		if wait "${pids[$step]}"; then
			say "$(tail -n 1 "$CACHE/logs/install-$step.log")"
		else
			failed+=" $step"
			say "install $step failed; last lines of $CACHE/logs/install-$step.log:"
			tail -n 30 "$CACHE/logs/install-$step.log" >&2
		fi
	done
	[[ -z $failed ]] || die "install failed:$failed"
	say "install done in $((SECONDS - t0))s"
}

# ---------------------------------------------------------------- start

launch_mosquitto() {
	local dir=$RUN/mosquitto
	mkdir -p "$dir/data"
	cat >"$dir/mosquitto.conf" <<EOF
# Written by compose/services.sh; rewritten on every start.
per_listener_settings false
listener $MQTT_PORT $HOST
protocol mqtt
allow_anonymous true
# Sessions and retained messages survive a restart (saved at shutdown and
# every autosave_interval seconds).
persistence true
persistence_location $dir/data/
autosave_interval 60
# Stay root: the Debian default drops to user mosquitto, which cannot write here.
user root
# Tests publish in bursts: generous limits, so QoS 1 traffic is neither throttled nor dropped.
max_inflight_messages 1000
max_queued_messages 100000
max_queued_bytes 0
set_tcp_nodelay true
log_dest file $dir/mosquitto.log
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
log_timestamp_format %Y-%m-%dT%H:%M:%S
EOF
	launch mosquitto "$dir/mosquitto.out" "$(mosquitto_bin)" -c "$dir/mosquitto.conf"
}

healthy_mosquitto() {
	port_open "$MQTT_PORT" || return 1
	command -v mosquitto_sub >/dev/null || return 0
	# A real MQTT round trip: the broker answers with its retained version.
	# shellcheck disable=SC2016 # $SYS is a topic, not a variable
	mosquitto_sub -h "$HOST" -p "$MQTT_PORT" -i fleet-services-probe -t '$SYS/broker/version' -C 1 -W 3 >/dev/null 2>&1
}

launch_minio() {
	local dir=$RUN/minio
	mkdir -p "$dir/data"
	MINIO_ROOT_USER=$MINIO_USER MINIO_ROOT_PASSWORD=$MINIO_PASSWORD \
		MINIO_UPDATE=off \
		launch minio "$dir/minio.log" "$MINIO_BIN" server --quiet \
		--address "$HOST:$MINIO_PORT" --console-address "$HOST:$MINIO_CONSOLE_PORT" "$dir/data"
}

healthy_minio() {
	[[ $(http_status "$MINIO_PORT" /minio/health/ready) == 200 ]]
}

launch_kafka() {
	local dir=$RUN/kafka cid
	mkdir -p "$dir/data" "$dir/logs"
	rm -f "$dir/logs/server.log" # health waits for this start's "Kafka Server started"
	cat >"$dir/server.properties" <<EOF
# Written by compose/services.sh; rewritten on every start.
# One combined broker+controller KRaft node, one replica of everything.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=$HOST:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
advertised.listeners=PLAINTEXT://$HOST:$KAFKA_PORT,CONTROLLER://$HOST:$KAFKA_CONTROLLER_PORT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
log.dirs=$dir/data

auto.create.topics.enable=true
num.partitions=4
default.replication.factor=1
min.insync.replicas=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
# Fewer internal partitions than production: faster start, faster group joins.
offsets.topic.num.partitions=4
transaction.state.log.num.partitions=4
share.coordinator.state.topic.num.partitions=4
group.initial.rebalance.delay.ms=0
num.recovery.threads.per.data.dir=1
EOF
	# Kafka wants a base64url UUID (22 characters) as the cluster id. One
	# that starts with "-" would be read as an option (1 start in 64 failed
	# so); Kafka's own random-uuid never makes one.
	cid=-
	while [[ $cid == -* ]]; do
		cid=$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')
	done
	if [[ -f $dir/data/meta.properties ]]; then
		: # kept data (FLEET_SERVICES_KEEP_DATA): already formatted
	elif ! java -Xmx256m -cp "$KAFKA_LIBS/*" \
		-Dlog4j2.configurationFile="$COMPOSE/kafka/log4j2.xml" -Dkafka.logs.dir="$dir/format" \
		kafka.tools.StorageTool format --standalone --cluster-id "$cid" \
		--config "$dir/server.properties" >"$dir/format.log" 2>&1 9>&-; then
		say "kafka: formatting the storage failed"
		show_log kafka
		return 1
	fi
	launch kafka "$dir/kafka.out" java \
		-Xms256m "-Xmx$KAFKA_HEAP" -XX:+UseG1GC -XX:MaxGCPauseMillis=20 \
		-XX:+ExitOnOutOfMemoryError -Djava.awt.headless=true \
		-Dlog4j2.configurationFile="$COMPOSE/kafka/log4j2.xml" -Dkafka.logs.dir="$dir/logs" \
		-cp "$KAFKA_LIBS/*" kafka.Kafka "$dir/server.properties"
}

healthy_kafka() {
	grep -qF 'Kafka Server started' "$RUN/kafka/logs/server.log" 2>/dev/null || return 1
	# A real metadata request through the Admin client.
	java -Xmx64m -XX:TieredStopAtLevel=1 -Dlog4j2.level=ERROR -Dlog4j2.statusLoggerLevel=OFF \
		-cp "$KAFKA_PROBE:$KAFKA_LIBS/*" KafkaProbe "$HOST:$KAFKA_PORT" 5000 \
		>"$RUN/kafka/probe.log" 2>&1 9>&-
}

# wait_healthy SVC: polls healthy_SVC until the deadline; fails early if the
# process dies.
wait_healthy() {
	local svc=$1 t0=$SECONDS deadline=$((SECONDS + START_DEADLINE[$1]))
	while ((SECONDS < deadline)); do
		if "healthy_$svc"; then
			say "$svc: ready on $(for p in ${PORTS[$svc]}; do printf '%s:%s ' "$HOST" "$p"; done)(pid $(<"$(pidfile "$svc")"), $((SECONDS - t0))s)"
			return 0
		fi
		if ! running "$svc" >/dev/null; then
			say "$svc: exited during start-up"
			show_log "$svc"
			return 1
		fi
		sleep 0.3
	done
	say "$svc: not healthy after ${START_DEADLINE[$svc]}s"
	show_log "$svc"
	return 1
}

write_env() {
	mkdir -p "$RUN"
	cmd_env >"$RUN/env.sh"
}

cmd_start() {
	local svc failed=""
	pick "$@"
	for svc in "${SEL[@]}"; do
		installed "$svc" || die "$svc is not installed (or not at the pinned version): run compose/services.sh install"
	done
	command -v java >/dev/null || die "java is not on PATH"
	lock
	for svc in "${SEL[@]}"; do
		if running "$svc" >/dev/null; then
			say "$svc: already running; stopping it to start again with clean data"
			stop_one "$svc"
		fi
	done
	if [[ $# -eq 0 && -z $KEEP_DATA ]]; then
		rm -rf "$RUN"
	fi
	for svc in "${SEL[@]}"; do
		check_ports "$svc"
	done
	for svc in "${SEL[@]}"; do
		[[ -n $KEEP_DATA ]] || rm -rf "${RUN:?}/$svc"
		mkdir -p "$RUN/$svc"
	done
	# Launch all, then wait: Kafka's JVM start overlaps the others.
	for svc in "${SEL[@]}"; do
		"launch_$svc" || { failed=$svc; break; }
	done
	if [[ -z $failed ]]; then
		for svc in "${SEL[@]}"; do
			wait_healthy "$svc" || { failed=$svc; break; }
		done
	fi
	if [[ -n $failed ]]; then
		say "start failed ($failed); stopping what was started. Logs: $RUN/$failed/"
		for svc in "${SEL[@]}"; do stop_one "$svc" quiet; done
		exit 1
	fi
	write_env
	cat "$RUN/env.sh"
}

# ---------------------------------------------------------------- stop, status, env

# stop_one SVC [quiet]: TERM, wait up to the deadline, then KILL.
stop_one() {
	local svc=$1 pid deadline
	if ! pid=$(running "$svc"); then
		[[ ${2:-} == quiet ]] || say "$svc: not running"
		rm -f "$(pidfile "$svc")"
		return 0
	fi
	kill -TERM "$pid" 2>/dev/null || true
	deadline=$((SECONDS + STOP_DEADLINE[$svc]))
	while running "$svc" >/dev/null && ((SECONDS < deadline)); do
		sleep 0.2
	done
	if running "$svc" >/dev/null; then
		say "$svc: still running ${STOP_DEADLINE[$svc]}s after SIGTERM; sending SIGKILL"
		kill -KILL "$pid" 2>/dev/null || true
		deadline=$((SECONDS + 5))
		while running "$svc" >/dev/null && ((SECONDS < deadline)); do
			sleep 0.2
		done
		running "$svc" >/dev/null && die "$svc (pid $pid) survived SIGKILL"
	fi
	rm -f "$(pidfile "$svc")"
	[[ ${2:-} == quiet ]] || say "$svc: stopped (pid $pid)"
}

cmd_stop() {
	local svc
	pick "$@"
	lock
	# Kafka first: it is the slowest and clients of the others may be in it.
	for svc in kafka minio mosquitto; do
		[[ " ${SEL[*]} " == *" $svc "* ]] && stop_one "$svc"
	done
	return 0
}

cmd_status() {
	local svc pid rc=0
	pick "$@"
	for svc in "${SEL[@]}"; do
		if pid=$(running "$svc"); then
			printf '%-10s running  pid %-7s %s\n' "$svc" "$pid" "$(for p in ${PORTS[$svc]}; do printf '%s:%s ' "$HOST" "$p"; done)"
		else
			printf '%-10s stopped\n' "$svc"
			rc=3
		fi
	done
	return "$rc"
}

cmd_env() {
	printf 'export FLEET_TEST_MQTT_URL=%q\n' "tcp://$HOST:$MQTT_PORT"
	printf 'export FLEET_TEST_KAFKA_BROKERS=%q\n' "$HOST:$KAFKA_PORT"
	printf 'export FLEET_TEST_S3_ENDPOINT=%q\n' "http://$HOST:$MINIO_PORT"
	printf 'export FLEET_TEST_S3_ACCESS_KEY=%q\n' "$MINIO_USER"
	printf 'export FLEET_TEST_S3_SECRET_KEY=%q\n' "$MINIO_PASSWORD"
	printf 'export FLEET_TEST_PYTHON=%q\n' "$PY"
	printf 'export FLEET_TEST_CANTOOLS_PYTHON=%q\n' "$PY"
}

usage() {
	sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"
}

main() {
	local cmd=${1:-}
	[[ $# -gt 0 ]] && shift
	case $cmd in
	install) cmd_install ;;
	start) cmd_start "$@" ;;
	stop) cmd_stop "$@" ;;
	restart) cmd_stop "$@" && cmd_start "$@" ;;
	status) cmd_status "$@" ;;
	env) cmd_env ;;
	-h | --help | help) usage ;;
	*)
		usage >&2
		exit 2
		;;
	esac
}

main "$@"
