#!/usr/bin/env bash
# Makes a demo CA and, signed by it, a server certificate for localhost and 127.0.0.1 and a client
# certificate whose CN is `plant-7`, into ./certs. For trying examples/secure/routes.yaml; use your
# own CA in production.
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p certs && cd certs
openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj "/CN=Barnabas demo CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out server.pem \
  -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth") 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=plant-7" -keyout plant-7.key -out plant-7.csr 2>/dev/null
openssl x509 -req -in plant-7.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 365 -out plant-7.pem \
  -extfile <(printf "extendedKeyUsage=clientAuth") 2>/dev/null
rm -f ./*.csr ca.srl
echo "certificates in $(pwd): ca.pem, server.pem/.key, plant-7.pem/.key"
