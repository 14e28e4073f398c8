#!/bin/sh
# Regenerates the TLS test certificates (host tests in net/src/tls and the https kickstart system
# test). P-256 keys, valid for 100 years from the day they are made. Run from this directory.
set -eu
days=36500
ec() { openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$1.key"; }
ca() { # name subject [key-command]
    ${3:-ec} "$1"
    openssl req -x509 -new -key "$1.key" -days $days -subj "/CN=$2" -out "$1.pem" \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign"
}
p384() { openssl ecparam -name secp384r1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out "$1.key"; }
rsa() { openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1.key"; }
leaf() { # name issuer subject-alt-names [x509 signing options]
    ec "$1"
    openssl req -new -key "$1.key" -subj "/CN=$1" -out "$1.csr"
    printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\nsubjectAltName=%s\n' "$3" > "$1.ext"
    openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days $days \
        -extfile "$1.ext" ${4:-} -out "$1.pem"
    rm -f "$1.csr" "$1.ext" "$2.srl"
}
ca ca "Ember Test CA"
ca other-ca "Some Other CA"
leaf server ca "DNS:ks.example.test,IP:10.0.2.2,IP:127.0.0.1"
leaf stranger other-ca "DNS:ks.example.test,IP:10.0.2.2,IP:127.0.0.1"
# A certificate issued by a server certificate (not a CA): must never be accepted.
leaf forged server "DNS:ks.example.test,IP:10.0.2.2,IP:127.0.0.1"
# Chains signed with the other algorithms Ember verifies: ECDSA P-384/SHA-384, RSA PKCS#1 and PSS.
ca p384-ca "Ember Test P-384 CA" p384
leaf p384-server p384-ca "DNS:ks.example.test" "-sha384"
ca rsa-ca "Ember Test RSA CA" rsa
leaf rsa-server rsa-ca "DNS:ks.example.test" "-sha256"
leaf rsa-pss-server rsa-ca "DNS:ks.example.test" "-sha256 -sigopt rsa_padding_mode:pss -sigopt rsa_pss_saltlen:32"
rm -f ca.key other-ca.key p384-ca.key rsa-ca.key p384-server.key rsa-server.key rsa-pss-server.key
