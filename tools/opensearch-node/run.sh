#!/usr/bin/env bash
# Run one real OpenSearch 2.19 node (built from Maven Central artifacts) in the foreground.
#
#   tools/opensearch-node/run.sh [-Ekey=value ...]     build if needed, then exec the node
#   tools/opensearch-node/run.sh --prepare             only build (+ CDS archive), exit 0
#
# Builds target/opensearch-node.jar + target/lib/ first if they are missing or older than
# pom.xml / src/, and records a class-data-sharing (AppCDS) archive of one node start-up
# for the java in use (start-up ~40% faster); both under flock, so concurrent callers
# build once. Then `exec java ...`: the PID of this script becomes the PID of the JVM and
# SIGTERM reaches OpenSearch directly (clean shutdown, exit code 143).
#
# Environment (all optional; -E arguments win over them):
#   OPENSEARCH_HEAP            heap for -Xms/-Xmx (default 512m)
#   OPENSEARCH_HOME            path.home (default: <this dir>/target/home)
#   OPENSEARCH_DATA            path.data (default: <path.home>/data)
#   OPENSEARCH_HTTP_PORT       http.port (default 9200)
#   OPENSEARCH_TRANSPORT_PORT  transport.port (default 9300)
#   OPENSEARCH_CLUSTER_NAME    cluster.name
#   OPENSEARCH_NODE_NAME       node.name
#   OPENSEARCH_FAST_START=1    C1-only JIT (-XX:TieredStopAtLevel=1): half the start-up CPU,
#                              slower steady state; meant for tests, not for benchmarks
#   OPENSEARCH_CDS=0           do not create/use the AppCDS archive
#   OPENSEARCH_JAVA_OPTS       extra JVM options (appended last; a -XX:+Use...GC here
#                              replaces the default G1)
#   JAVA_HOME / JAVA           which java to use (Java 17+; default: java on PATH)
#   OPENSEARCH_NODE_SKIP_BUILD=1  never build (nor create the CDS archive); fail if the jar
#                              is missing
#   MVN                        maven command (default: mvn)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target="$here/target"
jar="$target/opensearch-node.jar"

log() { echo "opensearch-node: $*" >&2; }

# ---------------------------------------------------------------- java
if [[ -n "${JAVA:-}" ]]; then
    java_bin="$JAVA"
elif [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
    java_bin="$JAVA_HOME/bin/java"
else
    java_bin="java"
fi
java_version="$("$java_bin" -version 2>&1 || true)"
# Java feature version, e.g. 17 from 'openjdk version "17.0.15"'
java_major="$(sed -n 's/.* version "\([0-9]*\).*/\1/p' <<<"$java_version" | head -n 1)"
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
    log "ERROR: need Java 17+, '$java_bin' is '${java_major:-unknown}'"
    exit 1
fi
# Same as OpenSearch 2.19's jvm.options: COMPAT exists up to JDK 22 and was removed in 23.
if [[ "$java_major" -le 22 ]]; then
    locale_providers="SPI,COMPAT"
else
    locale_providers="SPI,CLDR"
fi
java_path="$(command -v "$java_bin" || echo "$java_bin")"
java_path="$(readlink -f "$java_path" 2>/dev/null || echo "$java_path")"
cds_key="$(printf '%s\n%s\n' "$java_path" "$java_version" | cksum | cut -d' ' -f1)"
cds_archive="$target/cds/opensearch-node-java${java_major}-${cds_key}.jsa"

heap="${OPENSEARCH_HEAP:-512m}"

# JVM options: the parts of OpenSearch 2.19's jvm.options + SystemJvmOptions that matter
# without the security manager/bootstrap (no -XX:+AlwaysPreTouch: it would make every node's
# RSS at least the full heap).
jvm_opts=(
    "-Xms$heap" "-Xmx$heap"
    -Xss1m
    -XX:-OmitStackTraceInFastThrow
    -XX:+ShowCodeDetailsInExceptionMessages
    -Djava.awt.headless=true
    -Dfile.encoding=UTF-8
    "-Djava.locale.providers=$locale_providers"
    -Djna.nosys=true
    -Dio.netty.noUnsafe=true
    -Dio.netty.noKeySetOptimization=true
    -Dio.netty.recycler.maxCapacityPerThread=0
    -Dio.netty.allocator.numDirectArenas=0
    -Dlog4j.shutdownHookEnabled=false
    -Dlog4j2.disable.jmx=true
    -Dopensearch.networkaddress.cache.ttl=60
    -Dopensearch.networkaddress.cache.negative.ttl=10
)
if [[ "$java_major" -ge 22 ]]; then
    jvm_opts+=(--enable-native-access=ALL-UNNAMED) # Lucene's PosixNativeAccess (madvise)
fi
# G1 like OpenSearch, unless OPENSEARCH_JAVA_OPTS picks a collector itself
if [[ ! "${OPENSEARCH_JAVA_OPTS:-}" =~ -XX:\+Use[A-Za-z]+GC ]]; then
    jvm_opts+=(-XX:+UseG1GC)
fi

# ---------------------------------------------------------------- build + CDS
needs_build() {
    [[ -f "$jar" && -d "$target/lib" ]] || return 0
    [[ -n "$(find "$here/pom.xml" "$here/src" -newer "$jar" -print -quit)" ]]
}

cds_enabled() { [[ "${OPENSEARCH_CDS:-1}" != "0" ]]; }

needs_cds() {
    cds_enabled || return 1
    [[ ! -f "$cds_archive" || "$jar" -nt "$cds_archive" ]]
}

do_build() {
    log "building $jar (log: $target/build.log)"
    if ! (cd "$here" && ${MVN:-mvn} -B -q package >"$target/build.log" 2>&1); then
        log "ERROR: maven build failed, last lines of $target/build.log:"
        tail -n 40 "$target/build.log" >&2
        return 1
    fi
    touch "$jar" # the jar plugin may keep an unchanged jar; mark it as up to date
}

# Start one node on ephemeral ports with -XX:ArchiveClassesAtExit, let it exit cleanly
# (--exit-after-start) and keep the archive. Failure only costs the speed-up.
do_cds() {
    mkdir -p "$target/cds"
    rm -f "$target"/cds/*.jsa.tmp
    local train_home tmp_archive="$cds_archive.tmp"
    train_home="$(mktemp -d "${TMPDIR:-/tmp}/opensearch-node-cds.XXXXXX")"
    log "recording class-data-sharing archive $cds_archive (log: $target/cds/train.log)"
    if "$java_bin" "${jvm_opts[@]}" -XX:TieredStopAtLevel=1 \
        "-XX:ArchiveClassesAtExit=$tmp_archive" -Xlog:cds=off -Xlog:cds+dynamic=off \
        -jar "$jar" --exit-after-start "-Epath.home=$train_home" -Ehttp.port=0 \
        -Etransport.port=0 -Enode.name=cds-training -Ecluster.name=cds-training \
        >"$target/cds/train.log" 2>&1 && [[ -s "$tmp_archive" ]]; then
        mv -f "$tmp_archive" "$cds_archive"
    else
        log "WARNING: could not record the CDS archive (see $target/cds/train.log); starting without it"
        rm -f "$tmp_archive"
    fi
    rm -rf "$train_home"
}

prepare() {
    mkdir -p "$target"
    (
        # serialise concurrent builds (several pytest workers / shells)
        if command -v flock >/dev/null 2>&1; then
            flock 9
        fi
        if needs_build; then
            do_build || exit 1
        fi
        if needs_cds; then
            do_cds
        fi
    ) 9>"$target/.build.lock"
}

if [[ "${1:-}" == "--prepare" ]]; then
    prepare
    exit 0
fi

if [[ "${OPENSEARCH_NODE_SKIP_BUILD:-0}" == "1" ]]; then
    if needs_build; then
        log "ERROR: $jar missing or out of date and OPENSEARCH_NODE_SKIP_BUILD=1"
        exit 1
    fi
elif needs_build || needs_cds; then
    prepare
fi

if cds_enabled && [[ -f "$cds_archive" && ! "$jar" -nt "$cds_archive" ]]; then
    # -Xshare:auto (default): a stale/mismatched archive is ignored, never fatal
    jvm_opts+=("-XX:SharedArchiveFile=$cds_archive" -Xlog:cds=off -Xlog:cds+dynamic=off)
fi
if [[ "${OPENSEARCH_FAST_START:-0}" == "1" ]]; then
    jvm_opts+=(-XX:TieredStopAtLevel=1)
fi
if [[ -n "${OPENSEARCH_JAVA_OPTS:-}" ]]; then
    # shellcheck disable=SC2206 # word splitting intended
    jvm_opts+=(${OPENSEARCH_JAVA_OPTS})
fi

home="${OPENSEARCH_HOME:-$here/target/home}"
settings=("-Epath.home=$home")
if [[ -n "${OPENSEARCH_DATA:-}" ]]; then settings+=("-Epath.data=$OPENSEARCH_DATA"); fi
if [[ -n "${OPENSEARCH_HTTP_PORT:-}" ]]; then settings+=("-Ehttp.port=$OPENSEARCH_HTTP_PORT"); fi
if [[ -n "${OPENSEARCH_TRANSPORT_PORT:-}" ]]; then
    settings+=("-Etransport.port=$OPENSEARCH_TRANSPORT_PORT")
fi
if [[ -n "${OPENSEARCH_CLUSTER_NAME:-}" ]]; then
    settings+=("-Ecluster.name=$OPENSEARCH_CLUSTER_NAME")
fi
if [[ -n "${OPENSEARCH_NODE_NAME:-}" ]]; then settings+=("-Enode.name=$OPENSEARCH_NODE_NAME"); fi

exec "$java_bin" "${jvm_opts[@]}" -jar "$jar" "${settings[@]}" "$@"
