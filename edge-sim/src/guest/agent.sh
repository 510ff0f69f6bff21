#!/bin/sh
# edge-sim command agent, run by `nc -ll -e` with the connection on stdin and stdout.
# Request:  "EDGE1 TIMEOUT_SECS SCRIPT_LEN\n", SCRIPT_LEN bytes of shell script, then the
#           command's stdin until the host half-closes the connection.
# Response: "EDGE1 STATUS STDOUT_LEN STDERR_LEN\n", stdout's bytes, stderr's bytes.
# Everything goes through files, so output is exact (binary-safe, streams kept apart).
d=$(mktemp -d /tmp/edge-agent.XXXXXX) || exit 1
trap 'rm -rf "$d"' EXIT
cat > "$d/req"
hdr=$(head -n 1 "$d/req")
set -- $hdr
if [ "$1" != EDGE1 ] || [ "$#" -ne 3 ]; then
    printf 'EDGE1 bad-request\n'
    exit 0
fi
tmo=$2
slen=$3
skip=$((${#hdr} + 1))
tail -c +$((skip + 1)) "$d/req" | head -c "$slen" > "$d/cmd"
tail -c +$((skip + slen + 1)) "$d/req" > "$d/in"
rm -f "$d/req"
if [ "$tmo" -gt 0 ]; then
    timeout -s KILL "$tmo" sh "$d/cmd" < "$d/in" > "$d/out" 2> "$d/err"
else
    sh "$d/cmd" < "$d/in" > "$d/out" 2> "$d/err"
fi
st=$?
printf 'EDGE1 %d %d %d\n' "$st" "$(wc -c < "$d/out")" "$(wc -c < "$d/err")"
cat "$d/out" "$d/err"
