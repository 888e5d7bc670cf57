#!/usr/bin/env bash
# weftrun across nodes: two (or three) weftrun agents on this machine, one per
# "node", rendezvous through node 0's c10d TCPStore over loopback (and, where
# network namespaces are permitted, over a veth pair between two namespaces).
# Checks the 4-rank world and its collectives, the env contract across nodes,
# restarts of every node after a failure on one, the failure summary, a node
# that never arrives, disagreeing nodes, signals and dead agents leaving no
# processes. Every wait is bounded (timeout).
set -uo pipefail

WEFT="$PWD/weft"
WEFTRUN="$PWD/weftrun"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
expect_contains() {  # name haystack needle
  if [[ "$2" != *"$3"* ]]; then fail "$1: expected output to contain '$3', got:"$'\n'"$2"; fi
}
expect_not_contains() {  # name haystack needle
  if [[ "$2" == *"$3"* ]]; then fail "$1: expected output not to contain '$3', got:"$'\n'"$2"; fi
}

# A port that was free a moment ago (weftrun --standalone picks one).
free_port() {
  local line
  line="$("$WEFTRUN" --standalone sh -c 'echo "$MASTER_PORT"' 2>/dev/null)"
  echo "${line#\[rank0\]:}"
}

# run_nodes NAME COUNT: starts one agent per "node" in the
# background; node i's arguments are in the array nodeI_args; outputs land in
# $tmp/NAME.nodeI.log and exit codes in rcI. Bounded by `timeout 150`.
run_nodes() {
  local name="$1" count="$2" i
  local pids=()
  for ((i = 0; i < count; i++)); do
    local args="node${i}_args[@]"
    timeout -k 5 150 "$WEFTRUN" "${!args}" >"$tmp/$name.node$i.log" 2>&1 &
    pids+=($!)
  done
  for ((i = 0; i < count; i++)); do
    wait "${pids[$i]}"
    printf -v "rc$i" '%s' "$?"
  done
}

smoke_line() {  # rank world: the smoke job's line for `rank` in a world of 4
  local r="$1"
  echo "[rank$r]:rank $r/4 (torchrun, cpu): all_reduce(rank+1)=[10, 10] all_gather(chunks of arange)=[0, 1, 2, 3, 4, 5, 6, 7, 8] reduce_scatter=[$((10 * r))] broadcast(from last)=[42] tp.all_reduce(rank)=[$((r < 2 ? 1 : 5))] OK"
}

# 1. Two nodes x 2 workers over loopback: one 4-rank world whose collectives
#    work (every rank's values checked).
port="$(free_port)"
node0_args=(--nnodes 2 --node-rank 0 --nproc-per-node 2 --master-addr 127.0.0.1 --master-port "$port"
  --rdzv-id loop4 "$WEFT" smoke --device cpu)
node1_args=(--nnodes 2 --node-rank 1 --nproc-per-node 2 --rdzv-endpoint "127.0.0.1:$port"
  "$WEFT" smoke --device cpu)
run_nodes loopback 2
out0="$(cat "$tmp/loopback.node0.log")"
out1="$(cat "$tmp/loopback.node1.log")"
[[ $rc0 -eq 0 && $rc1 -eq 0 ]] || fail "loopback world: exit codes $rc0/$rc1: $out0"$'\n'"$out1"
expect_contains "loopback node 0" "$out0" "weftrun: node 0 of 2 joined run loop4 at 127.0.0.1:$port (ranks 0..1 of 4)"
expect_contains "loopback node 1" "$out1" "weftrun: node 1 of 2 joined run loop4 at 127.0.0.1:$port (ranks 2..3 of 4)"
for r in 0 1; do expect_contains "loopback rank $r" "$out0" "$(smoke_line $r)"; done
for r in 2 3; do expect_contains "loopback rank $r" "$out1" "$(smoke_line $r)"; done

# 2. The env contract across nodes, with 1 + 3 workers: global ranks follow
#    the node rank, node 1 takes node 0's run id, every worker gets node 0's
#    address and the same per-attempt MASTER_PORT (not the agents' port).
port="$(free_port)"
envprog=(sh -c 'echo "R=$RANK L=$LOCAL_RANK W=$WORLD_SIZE LW=$LOCAL_WORLD_SIZE G=$GROUP_RANK GW=$GROUP_WORLD_SIZE RR=$ROLE_RANK RW=$ROLE_WORLD_SIZE A=$MASTER_ADDR RC=$TORCHELASTIC_RESTART_COUNT MR=$TORCHELASTIC_MAX_RESTARTS ID=$TORCHELASTIC_RUN_ID"; echo "P=$MASTER_PORT"')
node0_args=(--nnodes 2 --node-rank 0 --nproc-per-node 1 --master-port "$port" --rdzv-id job9 "${envprog[@]}")
node1_args=(--nnodes 2 --node-rank 1 --nproc-per-node 3 --master-port "$port" --log-dir "$tmp/logs"
  "${envprog[@]}")
run_nodes env 2
out0="$(cat "$tmp/env.node0.log")"
out1="$(cat "$tmp/env.node1.log")"
[[ $rc0 -eq 0 && $rc1 -eq 0 ]] || fail "env: exit codes $rc0/$rc1"
expect_contains "env rank 0" "$out0" "[rank0]:R=0 L=0 W=4 LW=1 G=0 GW=2 RR=0 RW=4 A=127.0.0.1 RC=0 MR=0 ID=job9"
expect_contains "env rank 1" "$out1" "[rank1]:R=1 L=0 W=4 LW=3 G=1 GW=2 RR=1 RW=4 A=127.0.0.1 RC=0 MR=0 ID=job9"
expect_contains "env rank 3" "$out1" "[rank3]:R=3 L=2 W=4 LW=3 G=1 GW=2 RR=3 RW=4 A=127.0.0.1 RC=0 MR=0 ID=job9"
[[ "$(head -n 1 "$tmp/logs/job9/attempt_0/3/stdout.log" 2>&1)" == "R=3 L=2 W=4"* ]] ||
  fail "env: node 1's --log-dir should hold job9/attempt_0/3/stdout.log (global rank, node 0's run id)"
ports="$(cat "$tmp"/env.node*.log | grep -o 'P=[0-9]*' | sort -u)"
[[ "$(wc -l <<<"$ports")" -eq 1 && "$ports" != "P=$port" && "$ports" == P=* ]] ||
  fail "env: workers' MASTER_PORT should be one port other than the agents' $port, got: $ports"

# 3. A worker on node 1 fails at attempt 0: node 0's workers (sleeping) are
#    stopped too and every node restarts (TORCHELASTIC_RESTART_COUNT=1
#    everywhere); attempt 1 is a working 4-rank world on a new port.
port="$(free_port)"
restartprog=(sh -c 'echo "attempt $TORCHELASTIC_RESTART_COUNT port $MASTER_PORT"
  if [ "$TORCHELASTIC_RESTART_COUNT" = 0 ]; then
    if [ "$RANK" = 3 ]; then echo "boom on three" >&2; exit 7; fi
    exec sleep 100
  fi
  exec "$0" smoke --device cpu' "$WEFT")
node0_args=(--nnodes 2 --node-rank 0 --nproc-per-node 2 --master-port "$port" --max-restarts 1 "${restartprog[@]}")
node1_args=(--nnodes 2 --node-rank 1 --nproc-per-node 2 --master-port "$port" --max-restarts 1 "${restartprog[@]}")
start=$SECONDS
run_nodes restart 2
out0="$(cat "$tmp/restart.node0.log")"
out1="$(cat "$tmp/restart.node1.log")"
[[ $rc0 -eq 0 && $rc1 -eq 0 ]] || fail "restart: exit codes $rc0/$rc1: $out0"$'\n'"$out1"
((SECONDS - start < 60)) || fail "restart took $((SECONDS - start))s: node 0's workers were not stopped"
for out in "$out0" "$out1"; do
  expect_contains "restart summary" "$out" "weftrun: attempt 0: rank 3 on node 1 (local rank 1, pid"
  expect_contains "restart summary" "$out" "failed first with exit code 7"
  expect_contains "restart" "$out" "weftrun: restarting the workers of every node (1 of 1 restarts)"
done
for r in 0 1; do
  expect_contains "restart node 0" "$out0" "[rank$r]:attempt 0 port"
  expect_contains "restart node 0" "$out0" "[rank$r]:attempt 1 port"
  expect_contains "restart rank $r" "$out0" "$(smoke_line $r)"
done
for r in 2 3; do
  expect_contains "restart node 1" "$out1" "[rank$r]:attempt 1 port"
  expect_contains "restart rank $r" "$out1" "$(smoke_line $r)"
done

# 4. Restarts exhausted: rank 2 (node 1) is killed by a signal at every
#    attempt; both nodes exit non-zero naming it, its node, the signal and its
#    last stderr lines.
port="$(free_port)"
killprog=(sh -c 'if [ "$RANK" = 2 ]; then echo "dying on two" >&2; kill -9 $$; fi; exec sleep 100')
node0_args=(--nnodes 2 --node-rank 0 --nproc-per-node 2 --master-port "$port" --max-restarts 1 "${killprog[@]}")
node1_args=(--nnodes 2 --node-rank 1 --nproc-per-node 2 --master-port "$port" --max-restarts 1 "${killprog[@]}")
start=$SECONDS
run_nodes exhausted 2
out0="$(cat "$tmp/exhausted.node0.log")"
out1="$(cat "$tmp/exhausted.node1.log")"
[[ $rc0 -eq 1 && $rc1 -eq 1 ]] || fail "exhausted: exit codes $rc0/$rc1 (expected 1/1)"
((SECONDS - start < 60)) || fail "exhausted took $((SECONDS - start))s"
for out in "$out0" "$out1"; do
  expect_contains "exhausted" "$out" "weftrun: attempt 1: rank 2 on node 1 (local rank 0, pid"
  expect_contains "exhausted" "$out" "failed first with signal 9 (Killed)"
  expect_contains "exhausted" "$out" "weftrun: job failed; last stderr lines of rank 2 on node 1:"$'\n'"  dying on two"
done

# 5. A node that never arrives: node 0 waits --rdzv-timeout seconds and names
#    node 1; node 1 alone names node 0 (WEFTRUN_RDZV_TIMEOUT); with 3 nodes,
#    --rdzv-conf join_timeout names the missing node 2 on both that came.
port="$(free_port)"
start=$SECONDS
out="$(timeout 60 "$WEFTRUN" --nnodes 2 --node-rank 0 --master-port "$port" --rdzv-timeout 2 true 2>&1)"
rc=$?
[[ $rc -eq 2 ]] || fail "missing node 1: exit code $rc (expected 2)"
[[ "$out" == "weftrun: rendezvous of 2 nodes at 127.0.0.1:$port timed out after 2s: 1 of 2 nodes never arrived: node 1 (expected a weftrun on each node with the same --nnodes and --rdzv-endpoint)" ]] ||
  fail "missing node 1: got '$out'"
out="$(WEFTRUN_RDZV_TIMEOUT=2 timeout 60 "$WEFTRUN" --nnodes 2 --node-rank 1 --master-port "$port" true 2>&1)"
rc=$?
[[ $rc -eq 2 ]] || fail "missing node 0: exit code $rc (expected 2)"
[[ "$out" == "weftrun: node 1 could not reach the rendezvous store at 127.0.0.1:$port within 2s: node 0 never arrived (node 0's weftrun hosts the store; expected it to run with the same --rdzv-endpoint)" ]] ||
  fail "missing node 0: got '$out'"
((SECONDS - start < 30)) || fail "missing nodes took $((SECONDS - start))s (expected about 4s)"
port="$(free_port)"
node0_args=(--nnodes 3 --node-rank 0 --master-port "$port" --rdzv-conf join_timeout=3 true)
node1_args=(--nnodes 3 --node-rank 1 --master-port "$port" --rdzv-conf join_timeout=3 true)
run_nodes missing3 2
[[ $rc0 -eq 2 && $rc1 -eq 2 ]] || fail "missing node 2: exit codes $rc0/$rc1 (expected 2/2)"
for i in 0 1; do
  expect_contains "missing node 2 (node $i)" "$(cat "$tmp/missing3.node$i.log")" \
    "nodes at 127.0.0.1:$port timed out after 3s: 1 of 3 nodes never arrived: node 2 ("
done

# 6. Nodes that disagree: --nnodes, a node rank claimed twice, the agents'
#    port in use; each one line, and every node stops.
port="$(free_port)"
node0_args=(--nnodes 2 --node-rank 0 --master-port "$port" --rdzv-timeout 20 true)
node1_args=(--nnodes 3 --node-rank 1 --master-port "$port" --rdzv-timeout 20 true)
start=$SECONDS
run_nodes nnodes 2
line="weftrun: node 1 has --nnodes=3 but node 0 has --nnodes=2 (expected every node to agree)"
[[ $rc0 -eq 2 && $rc1 -eq 2 ]] || fail "nnodes mismatch: exit codes $rc0/$rc1 (expected 2/2)"
[[ "$(cat "$tmp/nnodes.node0.log")" == "$line" ]] || fail "nnodes mismatch, node 0: $(cat "$tmp/nnodes.node0.log")"
[[ "$(cat "$tmp/nnodes.node1.log")" == "$line" ]] || fail "nnodes mismatch, node 1: $(cat "$tmp/nnodes.node1.log")"
((SECONDS - start < 15)) || fail "nnodes mismatch took $((SECONDS - start))s (expected no wait for the timeout)"

port="$(free_port)"
node0_args=(--nnodes 2 --node-rank 0 --master-port "$port" --rdzv-timeout 5 sleep 100)
node1_args=(--nnodes 2 --node-rank 1 --master-port "$port" --rdzv-timeout 5 sleep 100)
node2_args=(--nnodes 2 --node-rank 1 --master-port "$port" --rdzv-timeout 5 sleep 100)
run_nodes twice 3
all="$(cat "$tmp"/twice.node*.log)"
[[ $rc0 -ne 0 && $rc1 -ne 0 && $rc2 -ne 0 ]] || fail "node rank claimed twice: exit codes $rc0/$rc1/$rc2"
expect_contains "claimed twice" "$all" "weftrun: node rank 1 was claimed by two weftrun agents (expected each --node-rank in 0..1 exactly once)"

port="$(free_port)"
timeout 60 "$WEFTRUN" --nnodes 2 --node-rank 0 --master-port "$port" --rdzv-timeout 10 true >/dev/null 2>&1 &
holder=$!
sleep 1
out="$(timeout 60 "$WEFTRUN" --nnodes 2 --node-rank 0 --master-port "$port" true 2>&1)"
rc=$?
kill -TERM "$holder" 2>/dev/null
wait "$holder"
[[ $rc -eq 2 && "$out" == "weftrun: node 0 cannot host the rendezvous store: port $port is already in use on this host (expected a free port in --rdzv-endpoint or --master-port)" ]] ||
  fail "agents' port in use: exit code $rc, '$out'"

# 7. Bad multi-node flags: one line each, exit 2.
check_error() {  # expected-line args...
  local expected="$1"; shift
  local out rc
  out="$(timeout 30 "$WEFTRUN" "$@" 2>&1)"; rc=$?
  [[ $rc -eq 2 ]] || fail "weftrun $*: exited $rc (expected 2)"
  [[ "$out" == "$expected" ]] || fail "weftrun $*: expected '$expected', got '$out'"
}
check_error "weftrun: --node-rank=3 is out of range for --nnodes=2 (expected 0..1)" --nnodes 2 --node-rank 3 true
check_error "weftrun: --nnodes=1:4 is an elastic range (expected a fixed node count N, or N:N)" --nnodes 1:4 true
check_error "weftrun: --nnodes=two is not a node count (expected >= 1)" --nnodes two true
check_error "weftrun: --rdzv-backend=etcd is not supported (expected c10d or static)" --rdzv-backend etcd true
check_error "weftrun: --rdzv-conf=join_timeout=soon has 'join_timeout=soon' (expected join_timeout=SECONDS with SECONDS > 0)" \
  --nnodes 2 --rdzv-conf join_timeout=soon true
check_error "weftrun: --rdzv-conf=color=blue has 'color=blue' (expected join_timeout, timeout or heartbeat_timeout, or one of torchrun's other keys)" \
  --rdzv-conf color=blue true
check_error "weftrun: --rdzv-timeout=0 is not a timeout (expected seconds > 0)" --nnodes 2 --rdzv-timeout 0 true
check_error "weftrun: --standalone is a single-node job but --nnodes=2 (expected --nnodes 1, or --rdzv-endpoint for several nodes)" \
  --standalone --nnodes 2 true
out="$(WEFTRUN_RDZV_TIMEOUT=later "$WEFTRUN" --nnodes 2 true 2>&1)"
[[ $? -eq 2 && "$out" == "weftrun: WEFTRUN_RDZV_TIMEOUT=later is not a timeout (expected seconds > 0)" ]] ||
  fail "WEFTRUN_RDZV_TIMEOUT=later: '$out'"
help="$("$WEFTRUN" --help)"
for flag in --nnodes --node-rank --rdzv-endpoint --rdzv-backend --rdzv-conf --rdzv-timeout --rdzv-id; do
  expect_contains "--help" "$help" "$flag"
done

# 8. SIGTERM to one agent mid-job: every node stops, no worker survives.
#    Once to node 1's agent, once to node 0's (the store's host).
for target in 1 0; do
  marker="weft_mn_orphan_${target}_$$"
  port="$(free_port)"
  pids=()
  for i in 0 1; do
    timeout -k 5 60 "$WEFTRUN" --nnodes 2 --node-rank $i --nproc-per-node 2 --master-port "$port" \
      bash -c "exec -a $marker sleep 300" >"$tmp/sigterm$target.node$i.log" 2>&1 &
    pids+=($!)
  done
  for ((k = 0; k < 100 && $(pgrep -f -c "^$marker") < 4; k++)); do sleep 0.1; done
  [[ $(pgrep -f -c "^$marker") -eq 4 ]] || fail "SIGTERM $target: the 4 workers did not start"
  # `timeout` runs weftrun as its child: signal weftrun itself.
  agent="$(pgrep -P "${pids[$target]}" -f weftrun)"
  kill -TERM "$agent"
  wait "${pids[0]}"; rc0=$?
  wait "${pids[1]}"; rc1=$?
  other=$((1 - target))
  [[ $(eval echo "\$rc$target") -eq 143 ]] || fail "SIGTERM $target: the signalled agent exited $(eval echo "\$rc$target") (expected 143)"
  [[ $(eval echo "\$rc$other") -eq 1 ]] || fail "SIGTERM $target: node $other exited $(eval echo "\$rc$other") (expected 1)"
  sleep 0.5
  if pgrep -f "$marker" >/dev/null; then
    fail "SIGTERM $target left workers running"
    pkill -9 -f "^$marker"
  fi
done
expect_contains "SIGTERM to node 1" "$(cat "$tmp/sigterm1.node0.log")" \
  "weftrun: node 1 received signal 15 (Terminated); every node stops its workers"
expect_contains "SIGTERM to node 0" "$(cat "$tmp/sigterm0.node1.log")" "weftrun: node 0 received signal 15 (Terminated)"

# A signal while the agents are still waiting for each other: no wait.
port="$(free_port)"
"$WEFTRUN" --nnodes 2 --node-rank 0 --master-port "$port" --rdzv-timeout 60 true >"$tmp/joinsig.log" 2>&1 &
pid=$!
sleep 1
start=$SECONDS
kill -TERM "$pid"
wait "$pid"
rc=$?
[[ $rc -eq 143 ]] || fail "SIGTERM while joining: exited $rc (expected 143)"
((SECONDS - start < 10)) || fail "SIGTERM while joining took $((SECONDS - start))s"
[[ "$(cat "$tmp/joinsig.log")" == "weftrun: received signal 15 (Terminated); workers stopped" ]] ||
  fail "SIGTERM while joining: $(cat "$tmp/joinsig.log")"

# 9. An agent killed outright (SIGKILL: no goodbye): its workers die with it,
#    node 0 notices the missing heartbeats and stops its own.
marker="weft_mn_dead_$$"
port="$(free_port)"
pids=()
for i in 0 1; do
  # (a subshell, so that the shell does not report the killed job)
  (timeout -k 5 60 "$WEFTRUN" --nnodes 2 --node-rank $i --nproc-per-node 2 --master-port "$port" \
    --rdzv-conf heartbeat_timeout=2 bash -c "exec -a $marker sleep 300" >"$tmp/dead.node$i.log" 2>&1
  exit $?) 2>/dev/null &
  pids+=($!)
done
for ((k = 0; k < 100 && $(pgrep -f -c "^$marker") < 4; k++)); do sleep 0.1; done
[[ $(pgrep -f -c "^$marker") -eq 4 ]] || fail "dead agent: the 4 workers did not start"
# node 1's agent: subshell -> timeout -> weftrun
kill -KILL "$(pgrep -P "$(pgrep -P "${pids[1]}" timeout)" weftrun)"
start=$SECONDS
wait "${pids[0]}"; rc0=$?
wait "${pids[1]}" 2>/dev/null
[[ $rc0 -eq 1 ]] || fail "dead agent: node 0 exited $rc0 (expected 1)"
((SECONDS - start < 20)) || fail "dead agent: node 0 took $((SECONDS - start))s to notice"
expect_contains "dead agent" "$(cat "$tmp/dead.node0.log")" \
  "weftrun: node 1 stopped responding (no heartbeat for 2s; expected its weftrun to keep running); every node stops its workers"
sleep 0.5
if pgrep -f "$marker" >/dev/null; then fail "dead agent left workers running"; pkill -9 -f "^$marker"; fi

# 10. examples/slurm/weftrun.sbatch, with a stand-in srun that starts its
#     command once per "node" of a 2-node allocation on this host.
sbatch="$PWD/examples/slurm/weftrun.sbatch"
fake="$tmp/fakeslurm"
mkdir -p "$fake/bin" "$fake/submit/bazel-bin"
ln -sf "$WEFT" "$fake/submit/bazel-bin/weft"
ln -sf "$WEFTRUN" "$fake/submit/bazel-bin/weftrun"
printf '%s\n' '#!/bin/sh' '# scontrol show hostnames LIST: every "node" is this host.' \
  'echo 127.0.0.1' 'echo 127.0.0.1' >"$fake/bin/scontrol"
printf '%s\n' '#!/usr/bin/env bash' \
  '# srun, one task per node: the command once per node, with its SLURM_NODEID.' \
  'while [[ "$1" == --* ]]; do shift; done' \
  'pids=()' \
  'for ((n = 0; n < SLURM_NNODES; n++)); do' \
  '  SLURM_NODEID=$n SLURM_PROCID=$n SLURM_LOCALID=0 "$@" &' \
  '  pids+=($!)' \
  'done' \
  'rc=0' \
  'for p in "${pids[@]}"; do wait "$p" || rc=$?; done' \
  'exit $rc' >"$fake/bin/srun"
chmod +x "$fake/bin/scontrol" "$fake/bin/srun"
sport="$(free_port)"
out="$(cd "$fake/submit" && PATH="$fake/bin:$PATH" SLURM_NNODES=2 SLURM_JOB_ID=4242 \
  SLURM_JOB_NODELIST="node[01-02]" SLURM_SUBMIT_DIR="$fake/submit" WEFT_RDZV_PORT="$sport" \
  NPROC_PER_NODE=2 timeout -k 5 150 bash "$sbatch" 2>&1)"
rc=$?
[[ $rc -eq 0 ]] || fail "weftrun.sbatch exited $rc: $out"
expect_contains "weftrun.sbatch" "$out" "weftrun: node 1 of 2 joined run 4242 at 127.0.0.1:$sport (ranks 2..3 of 4)"
for r in 0 1 2 3; do expect_contains "weftrun.sbatch rank $r" "$out" "$(smoke_line $r)"; done

# 11. Two network namespaces joined by a veth pair (10.77.0.1/24 and
#     10.77.0.2/24 exist only inside them): the same 4-rank world.
ns0="weftA$$" ns1="weftB$$"
cleanup_ns() { ip netns del "$ns0" 2>/dev/null; ip netns del "$ns1" 2>/dev/null; }
if command -v ip >/dev/null && ip netns add "$ns0" 2>/dev/null && ip netns add "$ns1" 2>/dev/null &&
  ip link add "va$$" type veth peer name "vb$$" 2>/dev/null; then
  trap cleanup_ns EXIT
  ip link set "va$$" netns "$ns0" && ip link set "vb$$" netns "$ns1" &&
    ip -n "$ns0" addr add 10.77.0.1/24 dev "va$$" && ip -n "$ns1" addr add 10.77.0.2/24 dev "vb$$" &&
    ip -n "$ns0" link set lo up && ip -n "$ns1" link set lo up &&
    ip -n "$ns0" link set "va$$" up && ip -n "$ns1" link set "vb$$" up ||
    fail "netns: could not set up the veth pair"
  node0_args=(--nnodes 2 --node-rank 0 --nproc-per-node 2 --rdzv-endpoint 10.77.0.1:29500 --rdzv-id ns
    "$WEFT" smoke --device cpu)
  node1_args=(--nnodes 2 --node-rank 1 --nproc-per-node 2 --rdzv-endpoint 10.77.0.1:29500 --rdzv-id ns
    sh -c 'echo "A=$MASTER_ADDR"; exec "$0" smoke --device cpu' "$WEFT")
  pids=()
  for i in 0 1; do
    ns="ns$i" dev="va$$"
    [[ $i -eq 1 ]] && dev="vb$$"
    local_args="node${i}_args[@]"
    timeout -k 5 150 ip netns exec "${!ns}" env GLOO_SOCKET_IFNAME="$dev" \
      "$WEFTRUN" "${!local_args}" >"$tmp/netns.node$i.log" 2>&1 &
    pids+=($!)
  done
  wait "${pids[0]}"; rc0=$?
  wait "${pids[1]}"; rc1=$?
  out0="$(cat "$tmp/netns.node0.log")"
  out1="$(cat "$tmp/netns.node1.log")"
  [[ $rc0 -eq 0 && $rc1 -eq 0 ]] || fail "netns world: exit codes $rc0/$rc1: $out0"$'\n'"$out1"
  expect_contains "netns node 1" "$out1" "[rank2]:A=10.77.0.1"
  for r in 0 1; do expect_contains "netns rank $r" "$out0" "$(smoke_line $r)"; done
  for r in 2 3; do expect_contains "netns rank $r" "$out1" "$(smoke_line $r)"; done
  cleanup_ns
  trap - EXIT
else
  cleanup_ns
  echo "SKIP: network namespaces (ip netns add / veth) are not permitted here; loopback only"
fi

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all multi-node weftrun checks passed"
