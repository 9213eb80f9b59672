# Shell functions for the benchmarks that start `aha serve` engines (sourced, not run):
#   serve AHA MODEL LOG   starts a one-thread server on a free port of 127.0.0.1, prints its pid
#   port LOG              waits until that server listens and prints its port (exit 1 after 60 s)

serve() {
    RAYON_NUM_THREADS=1 "$1" serve --model "$2" --port 0 >/dev/null 2>"$3" &
    echo $!
}

port() {
    for _ in $(seq 1 300); do
        p=$(grep -a -o 'listening on http://127.0.0.1:[0-9]*' "$1" | grep -o '[0-9]*$' || true)
        [ -n "$p" ] && { echo "$p"; return; }
        sleep 0.2
    done
    echo "no server came up: $1" >&2
    exit 1
}
