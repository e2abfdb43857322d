# Starts a scratch billhook with demo traffic, for the scripts that need a live server
# (screenshots, schemathesis). Source it from the repository root, then call `start_demo`: it
# sets $port, $bin and $work, exports BILLHOOK_ADMIN_TOKEN, and stops everything when the
# calling script exits. Two endpoints: one healthy (a local receiver), one failing.

demo_receiver() {
  # Answers 200 to every delivery.
  python3 - "$1" <<'PY'
import http.server, sys
class Ok(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Ok).serve_forever()
PY
}

demo_config() {
  cat <<TOML
listen = "127.0.0.1:$port"
data_dir = "$work/data"
admin_token = "demo-admin-token"

[delivery]
allow_private_destinations = ["127.0.0.0/8"]
retry_schedule = ["0s", "30s", "5m"]

[[source]]
name = "razorpay"
provider = "razorpay"
secrets = ["demo-razorpay-secret"]

[[source]]
name = "zwitch"
provider = "zwitch"
secrets = ["demo-zwitch-secret"]

[[source]]
name = "setu"
provider = "setu_bbps"
auth = { kind = "header", name = "X-BILL-WEBHOOK-API-KEY", value = "demo-setu-key" }

[[source]]
name = "caminvoice"
provider = "caminvoice"
auth = { kind = "path_token", token = "demo-caminvoice-token" }

[[endpoint]]
name = "ledger-service"
url = "http://127.0.0.1:$receiver_port/hooks"
event_types = ["invoice.*", "payment.*"]

[[endpoint]]
name = "legacy-erp"
url = "http://127.0.0.1:$port/healthz"
event_types = ["invoice.settled"]
description = "answers 405: shows what a failing endpoint looks like"
TOML
}

free_ports() {
  # Two ports the kernel hands out now, held together so that they differ (not guessed ones
  # that something may hold).
  python3 -c '
import socket
held = [socket.socket() for _ in range(2)]
for s in held: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))'
}

# Polls `curl "$@"` until it succeeds, up to $1 tries 0.2 s apart; fails saying what did not
# answer, with billhook's log so far.
wait_for() {
  local tries=$1; shift
  for _ in $(seq 1 "$tries"); do
    curl -fs "$@" >/dev/null && return 0
    sleep 0.2
  done
  echo "demo: no answer from ${*: -1}" >&2
  if [ -s "$work/serve.log" ]; then
    echo "billhook's log:" >&2
    cat "$work/serve.log" >&2
  fi
  return 1
}

start_demo() {
  cargo build --quiet --locked -p billhook
  bin=target/debug/billhook
  work=$(mktemp -d)
  trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
  local ports
  ports=$(free_ports)
  read -r port receiver_port <<<"$ports"

  demo_receiver "$receiver_port" &
  wait_for 50 -X POST -d '' "http://127.0.0.1:$receiver_port/"
  demo_config >"$work/billhook.toml"
  "$bin" serve --config "$work/billhook.toml" >"$work/serve.log" 2>&1 &
  wait_for 150 "http://127.0.0.1:$port/readyz"

  export BILLHOOK_ADMIN_TOKEN=demo-admin-token
  for scenario in scenarios/*.toml; do
    "$bin" trigger --scenario "$scenario" --config "$work/billhook.toml" >/dev/null
  done
  for _ in 1 2 3; do
    "$bin" trigger razorpay payment.captured --config "$work/billhook.toml" >/dev/null
  done
  "$bin" trigger setu_bbps BILLER_UPDATES --config "$work/billhook.toml" >/dev/null
  # A forged request and one that verifies but cannot be read.
  curl -s -o /dev/null -X POST "http://127.0.0.1:$port/ingest/razorpay" \
    -H "x-razorpay-signature: 0000" -d '{}'
  curl -s -o /dev/null -X POST "http://127.0.0.1:$port/ingest/setu" \
    -H "X-BILL-WEBHOOK-API-KEY: demo-setu-key" -d '{"event": "BILL_PAY", "data": "?"}'
  # Let deliveries run and the activity counters reach the database.
  sleep 6
}
