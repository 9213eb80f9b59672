# Shell functions shared by the benchmark scripts (sourced, not run):
#   cpu_line              prints the CPU model and its vector flags (avx512f, avx2, fma)
#   demo_shapes MODEL OUT prints bench/grpo_demo_shapes.toml for MODEL, writing to OUT
#   serve AHA MODEL LOG   starts a one-thread server on a free port of 127.0.0.1, prints its pid
#   port LOG              waits until that server listens and prints its port (exit 1 after 60 s)
#   serve_pair AHA MODEL PREFIX
#                         two such servers (logs PREFIX-a.log, PREFIX-b.log), once both listen;
#                         prints "PID_A PID_B PORT_A PORT_B"

cpu_line() {
    grep -m1 'model name' /proc/cpuinfo
    echo "flags: $(grep -m1 '^flags' /proc/cpuinfo | grep -o -w 'avx512f\|avx2\|fma' | sort -u | tr '\n' ' ')"
}

demo_shapes() {
    sed -e "s|MODEL|$1|" -e "s|OUT|$2|" bench/grpo_demo_shapes.toml
}

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

serve_pair() {
    local a b pa pb
    a=$(serve "$1" "$2" "$3-a.log")
    b=$(serve "$1" "$2" "$3-b.log")
    pa=$(port "$3-a.log") || return 1
    pb=$(port "$3-b.log") || return 1
    echo "$a $b $pa $pb"
}
