#!/usr/bin/env bash
# Issues the X.509 v3 certificates of a TLS deployment (docs/security.md), with openssl:
#
#   scripts/issue-certs.sh ca     DIR NAME            a CA: DIR/NAME-ca.crt, DIR/NAME-ca.key
#                                                     (one per manufacturer for its pens, one
#                                                     for the servers)
#   scripts/issue-certs.sh server DIR CA HOST...      a server certificate for the broker or
#                                                     penwarden's gRPC: DIR/HOST.crt, .key,
#                                                     every HOST (DNS name or IP) in its SAN
#   scripts/issue-certs.sh client DIR CA NAME         a client certificate whose CN is NAME: a
#                                                     pen's serial (the broker takes it as the
#                                                     user name) or "penwarden"
#   scripts/issue-certs.sh pens   DIR CA SERIAL...    one client certificate per pen serial
#
# CA is a CA's NAME issued into the same DIR. Keys are ECDSA P-256, written 0600. Certificates
# are valid for CERT_DAYS (default 825) days, CAs for CA_DAYS (default 3650).
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" >&2
    exit 2
}

[[ $# -ge 3 ]] || usage
command -v openssl >/dev/null || { echo "openssl is not installed" >&2; exit 1; }
kind=$1 dir=$2
shift 2
mkdir -p "$dir"
umask 077
cert_days=${CERT_DAYS:-825}
ca_days=${CA_DAYS:-3650}

new_key() {
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
}

# issue CA NAME EXTENSIONS: a certificate for the key DIR/NAME.key, signed by CA.
issue() {
    local ca=$1 name=$2 extensions=$3
    [[ -f "$dir/$ca-ca.crt" && -f "$dir/$ca-ca.key" ]] || { echo "no CA $ca in $dir (issue it with: $0 ca $dir $ca)" >&2; exit 1; }
    new_key "$dir/$name.key"
    openssl req -new -key "$dir/$name.key" -subj "/CN=$name" -out "$dir/$name.csr" 2>/dev/null
    openssl x509 -req -in "$dir/$name.csr" -CA "$dir/$ca-ca.crt" -CAkey "$dir/$ca-ca.key" -CAcreateserial \
        -days "$cert_days" -sha256 -extfile <(printf '%s\n' "$extensions") -out "$dir/$name.crt" 2>/dev/null
    rm -f "$dir/$name.csr"
    chmod 644 "$dir/$name.crt"
    echo "issued $dir/$name.crt (CN=$name, by $ca)"
}

client_extensions() {
    printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature" \
        "extendedKeyUsage=clientAuth" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid"
}

case $kind in
    ca)
        name=$1
        new_key "$dir/$name-ca.key"
        openssl req -x509 -new -key "$dir/$name-ca.key" -subj "/CN=$name CA" -days "$ca_days" -sha256 \
            -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
            -out "$dir/$name-ca.crt" 2>/dev/null
        chmod 644 "$dir/$name-ca.crt"
        echo "issued $dir/$name-ca.crt"
        ;;
    server)
        [[ $# -ge 2 ]] || usage
        ca=$1 host=$2
        shift
        names=()
        for name in "$@"; do
            if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then names+=("IP:$name"); else names+=("DNS:$name"); fi
        done
        san=$(IFS=,; echo "${names[*]}")
        issue "$ca" "$host" "$(printf '%s\n' "basicConstraints=critical,CA:FALSE" \
            "keyUsage=critical,digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" \
            "subjectAltName=$san" "subjectKeyIdentifier=hash" "authorityKeyIdentifier=keyid")"
        ;;
    client)
        [[ $# -eq 2 ]] || usage
        issue "$1" "$2" "$(client_extensions)"
        ;;
    pens)
        [[ $# -ge 2 ]] || usage
        ca=$1
        shift
        for serial in "$@"; do
            issue "$ca" "$serial" "$(client_extensions)"
        done
        ;;
    *)
        usage
        ;;
esac
