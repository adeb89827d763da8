# tools/deps.sh - sourced by quickstart.sh and run-tests.sh: installs the Debian bookworm packages
# acmegw needs to build, run and test. apt-get update runs first when anything is missing (a
# fresh machine has no package lists); sudo is used when not root.
ACMEGW_PACKAGES="meson ninja-build pkg-config gcc libc6-dev libh2o-evloop-dev libp11-dev
  libp11-kit-dev libssl-dev openssl libjansson-dev libsqlite3-dev sqlite3 libcyaml-dev libyaml-dev
  softhsm2 opensc curl ca-certificates python3 python3-cryptography certbot lego libpq-dev
  postgresql haproxy"

acmegw_install_deps() {
    local missing="" p sudo=""
    for p in $ACMEGW_PACKAGES; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
            missing="$missing $p"
    done
    [ -z "$missing" ] && return 0
    [ "$(id -u)" -ne 0 ] && sudo="sudo"
    echo "installing:$missing" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        $missing >/dev/null
}
