#!/usr/bin/env bash
# Send one image to the server started by serve_local.sh; the answer goes to stdout.
#   ./predict.sh IMAGE_FILE [ACCEPT [CONTENT_TYPE]] > answer
#   ACCEPT: image/png (default: the class-id mask), application/x-recordio-protobuf
#   (probabilities) or application/json (class summary); CONTENT_TYPE: image/jpeg (default),
#   image/png or application/x-image.
# PORT for another host port.
set -euo pipefail
file=${1:?usage: predict.sh IMAGE_FILE [ACCEPT [CONTENT_TYPE]]}
accept=${2:-image/png}
content_type=${3:-image/jpeg}
exec curl -sS --fail-with-body --data-binary "@$file" \
  -H "Content-Type: $content_type" -H "Accept: $accept" \
  "http://localhost:${PORT:-8080}/invocations"
