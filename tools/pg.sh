# tools/pg.sh - sourced by run-tests.sh and cluster.sh: a throwaway PostgreSQL server for tests
# and local clusters. Not for production: trust authentication for every local user.
#
#   acmegw_pg_start DIR   initdb in DIR/data (unless it exists), start the server on a free port
#                         with its unix socket in DIR and no TCP listener, wait until it answers;
#                         sets ACMEGW_PG_CONNINFO="host=DIR port=P user=acmegw" (no dbname: callers
#                         add one). The port is kept in DIR/port, so a second call reuses it.
#   acmegw_pg_stop DIR    immediate stop (the data is throwaway); the caller removes DIR if it wants
#   acmegw_pg_running DIR true if the server in DIR answers
#
# initdb refuses to run as root: as root the server runs as the postgres user (runuser), which
# must be able to reach DIR: DIR is chowned to it, and each parent gets o+x (traverse, no listing)
# when it lacks it. Otherwise the server runs as the calling user.
ACMEGW_PG_BIN=${ACMEGW_PG_BIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)}

acmegw_pg_as() { # command...: as the postgres user when root
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

acmegw_pg_running() { # dir
    [ -f "$1/port" ] && "$ACMEGW_PG_BIN/pg_isready" -q -t 2 -h "$1" -p "$(cat "$1/port")"
}

acmegw_pg_start() { # dir
    local dir=$1 port d
    [ -x "$ACMEGW_PG_BIN/initdb" ] || { echo "pg.sh: no PostgreSQL server binaries" >&2; return 1; }
    mkdir -p "$dir" || return 1
    dir=$(cd "$dir" && pwd)
    if [ "$(id -u)" -eq 0 ]; then
        chown postgres "$dir" || return 1
        d=$(dirname "$dir")
        while [ "$d" != / ]; do
            runuser -u postgres -- test -x "$d" || chmod o+x "$d" || return 1
            d=$(dirname "$d")
        done
    fi
    if acmegw_pg_running "$dir"; then
        ACMEGW_PG_CONNINFO="host=$dir port=$(cat "$dir/port") user=acmegw"
        return 0
    fi
    if [ ! -f "$dir/data/PG_VERSION" ]; then
        acmegw_pg_as "$ACMEGW_PG_BIN/initdb" -D "$dir/data" -U acmegw --auth=trust -E UTF8 \
            --locale=C >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; return 1; }
    fi
    port=$(cat "$dir/port" 2>/dev/null || python3 -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    echo "$port" >"$dir/port"
    acmegw_pg_as "$ACMEGW_PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w \
        -o "-k $dir -p $port -c listen_addresses='' -c max_connections=200" \
        start >/dev/null || { cat "$dir/server.log" >&2; return 1; }
    "$ACMEGW_PG_BIN/pg_isready" -q -t 30 -h "$dir" -p "$port" || return 1
    ACMEGW_PG_CONNINFO="host=$dir port=$port user=acmegw"
}

acmegw_pg_stop() { # dir
    [ -n "$1" ] && [ -f "$1/data/PG_VERSION" ] || return 0
    acmegw_pg_as "$ACMEGW_PG_BIN/pg_ctl" -D "$1/data" -m immediate stop >/dev/null 2>&1 || true
}
