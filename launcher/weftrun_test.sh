#!/usr/bin/env bash
# weftrun end to end: the smoke job on 2 and 4 ranks, under weftrun and plain
# mpirun; the env contract; failure teardown and summary; restarts; signal
# forwarding without orphans; and each bad-input error.
set -uo pipefail

WEFT="$PWD/weft"
WEFTRUN="$PWD/weftrun"
tmp="${TEST_TMPDIR:-$(mktemp -d)}"
failures=0
fail() { echo "FAIL: $*" >&2; failures=$((failures + 1)); }
expect_contains() {  # name haystack needle
  if [[ "$2" != *"$3"* ]]; then fail "$1: expected output to contain '$3', got:"$'\n'"$2"; fi
}

# 1. The smoke job on 2 and 4 ranks: every rank prints OK.
for n in 2 4; do
  out="$("$WEFTRUN" --standalone --nproc-per-node "$n" "$WEFT" smoke --device cpu 2>&1)"
  rc=$?
  [[ $rc -eq 0 ]] || fail "smoke on $n ranks exited $rc: $out"
  for ((r = 0; r < n; r++)); do
    expect_contains "smoke $n" "$out" "[rank$r]:rank $r/$n (torchrun, cpu):"
  done
  [[ "$(grep -c ' OK$' <<<"$out")" -eq $n ]] || fail "smoke $n: not every rank OK: $out"
done

# 2. Plain mpirun (Open MPI's variables, store address agreed through MPI).
if command -v mpirun >/dev/null; then
  out="$(OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 120 \
        mpirun --oversubscribe -np 2 "$WEFT" smoke --device cpu 2>&1)"
  rc=$?
  [[ $rc -eq 0 ]] || fail "mpirun smoke exited $rc: $out"
  expect_contains "mpirun" "$out" "rank 1/2 (mpirun, cpu):"
  [[ "$(grep -c ' OK$' <<<"$out")" -eq 2 ]] || fail "mpirun: not every rank OK: $out"
fi

# 3. The torchrun env contract.
out="$("$WEFTRUN" --nproc-per-node 2 --master-port 29555 --rdzv-id job7 sh -c \
  'echo "R=$RANK L=$LOCAL_RANK W=$WORLD_SIZE LW=$LOCAL_WORLD_SIZE G=$GROUP_RANK GW=$GROUP_WORLD_SIZE RR=$ROLE_RANK RW=$ROLE_WORLD_SIZE M=$MASTER_ADDR:$MASTER_PORT RC=$TORCHELASTIC_RESTART_COUNT MR=$TORCHELASTIC_MAX_RESTARTS ID=$TORCHELASTIC_RUN_ID OMP=$OMP_NUM_THREADS"' 2>&1)"
expect_contains "env" "$out" "[rank1]:R=1 L=1 W=2 LW=2 G=0 GW=1 RR=1 RW=2 M=127.0.0.1:29555 RC=0 MR=0 ID=job7 OMP=1"
expect_contains "env" "$out" "[rank0]:R=0 L=0 W=2"

# 4. A failing worker stops the others at once; the summary names it.
start=$SECONDS
out="$("$WEFTRUN" --nproc-per-node 3 sh -c \
  'if [ "$RANK" = 1 ]; then echo "boom on one" >&2; exit 3; fi; sleep 60' 2>&1)"
rc=$?
[[ $rc -ne 0 ]] || fail "failing job exited 0"
((SECONDS - start < 30)) || fail "failing job took $((SECONDS - start))s: the others were not stopped"
expect_contains "failure" "$out" "rank 1 (local rank 1, pid"
expect_contains "failure" "$out" "failed first with exit code 3"
expect_contains "failure" "$out" "last stderr lines of rank 1:"
expect_contains "failure" "$out" "  boom on one"

# 5. Restarts: the whole group restarts with TORCHELASTIC_RESTART_COUNT set.
out="$("$WEFTRUN" --nproc-per-node 2 --max-restarts 2 sh -c \
  'echo "attempt $TORCHELASTIC_RESTART_COUNT"; [ "$TORCHELASTIC_RESTART_COUNT" = 2 ]' 2>&1)"
rc=$?
[[ $rc -eq 0 ]] || fail "restarts: exited $rc: $out"
expect_contains "restarts" "$out" "[rank0]:attempt 2"
expect_contains "restarts" "$out" "restarting all workers (2 of 2 restarts)"

# 6. SIGTERM to weftrun reaches the workers; none survives.
marker="weft_orphan_check_$$"
"$WEFTRUN" --nproc-per-node 2 bash -c "exec -a $marker sleep 300" >"$tmp/sig.log" 2>&1 &
pid=$!
sleep 1
kill -TERM "$pid"
wait "$pid"
rc=$?
[[ $rc -eq $((128 + 15)) ]] || fail "SIGTERM: weftrun exited $rc (expected 143)"
sleep 0.5
if pgrep -f "$marker" >/dev/null; then fail "SIGTERM left workers running"; pkill -9 -f "$marker"; fi

# 6b. The root cause is named: rank 0 dies first of a lost connection, rank 1
#     exits later with its own error; weftrun names rank 1 and quotes both.
out="$("$WEFTRUN" --standalone --nproc-per-node 2 sh -c \
  'if [ "$RANK" = 1 ]; then trap "" TERM; echo "optimizer shard 1 is missing" >&2; sleep 1; exit 2;
   else sleep 0.3; echo "gloo: Connection closed by peer [127.0.0.1]:1234" >&2; exit 1; fi' 2>&1)"
expect_contains "root cause" "$out" "weftrun: attempt 0: rank 1 (local rank 1, pid"
expect_contains "root cause" "$out" "failed with exit code 2; rank 0 failed first, of a lost connection: gloo: Connection closed by peer [127.0.0.1]:1234"
expect_contains "root cause" "$out" "weftrun: job failed; last stderr lines of rank 1:"$'\n'"  optimizer shard 1 is missing"

# 7. Bad input: one line, non-zero exit.
check_error() {  # expected-line args...
  local expected="$1"; shift
  local out rc
  out="$("$WEFTRUN" "$@" 2>&1)"; rc=$?
  [[ $rc -ne 0 ]] || fail "weftrun $*: exited 0"
  [[ "$out" == "$expected" ]] || fail "weftrun $*: expected '$expected', got '$out'"
}
check_error "weftrun: no program given (expected: weftrun [OPTIONS] PROGRAM [ARGS...])"
check_error "weftrun: unknown flag '--bogus' (see weftrun --help)" --bogus 1 prog
check_error "weftrun: cannot execute '/no/such/program': No such file or directory" /no/such/program
check_error "weftrun: cannot execute 'no-such-program-xyz': not found on PATH" no-such-program-xyz
check_error "weftrun: --node-rank=2 is out of range for --nnodes=2 (expected 0..1)" --nnodes 2 --node-rank 2 true
check_error "weftrun: --nproc-per-node=0 is not a worker count (expected N >= 1 or auto)" --nproc-per-node 0 true
max_workers=$((8 * $(nproc) > 64 ? 8 * $(nproc) : 64))
check_error "weftrun: --nproc-per-node=100000 is more workers than this node runs (expected at most $max_workers: 8 per CPU core, at least 64)" --nproc-per-node 100000 true
check_error "weftrun: --local-ranks-filter names local rank 5, but this node runs 2 workers (expected 0..1)" --nproc-per-node 2 --local-ranks-filter 5 true
check_error "weftrun: --monitor-interval=0 is not an interval (expected seconds > 0)" --monitor-interval 0 true
check_error "weftrun: --monitor-interval=-1 is not an interval (expected seconds > 0)" --monitor-interval -1 true
check_error "weftrun: --monitor-interval=nan is not an interval (expected seconds > 0)" --monitor-interval nan true
"$WEFTRUN" --help | grep -q -- "--nproc-per-node" || fail "--help does not list --nproc-per-node"
# torchrun's command lines run unchanged: --no-python / --no_python are accepted.
for flag in --no-python --no_python; do
  out="$("$WEFTRUN" --standalone --nproc-per-node 1 "$flag" sh -c 'echo ran' 2>&1)" ||
    fail "weftrun $flag exited $?: $out"
  [[ "$out" == "[rank0]:ran" ]] || fail "weftrun $flag: got '$out'"
done

# 8. The runtime's own errors reach the user as one line through weftrun.
out="$("$WEFTRUN" --nproc-per-node 2 --master-port 29577 env WORLD_SIZE=3 WEFT_RDZV_TIMEOUT=2 "$WEFT" smoke --device cpu 2>&1)"
rc=$?
[[ $rc -ne 0 ]] || fail "mismatched world exited 0"
expect_contains "world mismatch" "$out" "weft smoke: rendezvous at 127.0.0.1:29577 timed out after 2s: 1 of 3 ranks never arrived: 2"

# 9. --log-dir files per attempt and rank; --local-ranks-filter on the console.
out="$("$WEFTRUN" --nproc-per-node 2 --rdzv-id jobL --log-dir "$tmp/logs" --local-ranks-filter 1 \
      sh -c 'echo "out$RANK"; echo "err$RANK" >&2' 2>&1)"
[[ "$out" == *"[rank1]:out1"* && "$out" != *"[rank0]"* ]] || fail "local-ranks-filter: $out"
[[ "$(cat "$tmp/logs/jobL/attempt_0/0/stdout.log" 2>&1)" == "out0" ]] || fail "log-dir stdout of rank 0"
[[ "$(cat "$tmp/logs/jobL/attempt_0/1/stderr.log" 2>&1)" == "err1" ]] || fail "log-dir stderr of rank 1"
check_error "weftrun: --local-ranks-filter=0,x has 'x' (expected comma-separated local ranks, e.g. 0,1)" \
  --local-ranks-filter 0,x true
# --redirects: rank 1's stdout only in its file, stderr still on the console.
out="$("$WEFTRUN" --nproc-per-node 2 --rdzv-id jobR --log-dir "$tmp/logs" --redirects 1:1 \
      sh -c 'echo "out$RANK"; echo "err$RANK" >&2' 2>&1)"
[[ "$out" == *"[rank0]:out0"* && "$out" != *"[rank1]:out1"* && "$out" == *"[rank1]:err1"* ]] ||
  fail "redirects: $out"
[[ "$(cat "$tmp/logs/jobR/attempt_0/1/stdout.log" 2>&1)" == "out1" ]] || fail "redirects file"
check_error "weftrun: --redirects needs --log-dir (expected a directory for the log files)" --redirects 3 true
check_error "weftrun: --tee=5 has '5' (expected 0-3, or local_rank:0-3 pairs such as 0:3,1:2)" --tee 5 true

# 10. Tensor parallelism from the CLI: weft generate --tp-plan under weftrun
#    reproduces transformers' greedy ids (TP=4 replicates the 2 KV heads).
for n in 2 4; do
  out="$("$WEFTRUN" --standalone --nproc-per-node "$n" "$WEFT" generate --model tests/data/hf/llama \
        --prompt-ids 47,211,38,53,204,116,152,249 --max-new-tokens 8 --tp-plan auto 2>&1)"
  [[ "$out" == "[rank0]:47,211,38,53,204,116,152,249,32,133,19,92,175,88,175,233" ]] ||
    fail "TP=$n generate: $out"
done
# ... and so do pipeline stages: PP=2, PP=4 (one stage per rank: the
# embedding, a layer, a layer, the norm and the head), PP=2 x TP=2.
for flags in "2 --pp-plan auto" "4 --pp-plan auto" "4 --pp-plan auto --pp 2 --tp-plan auto"; do
  n="${flags%% *}"
  out="$("$WEFTRUN" --standalone --nproc-per-node "$n" "$WEFT" generate --model tests/data/hf/llama \
        --prompt-ids 47,211,38,53,204,116,152,249 --max-new-tokens 8 ${flags#* } 2>&1)"
  [[ "$out" == "[rank0]:47,211,38,53,204,116,152,249,32,133,19,92,175,88,175,233" ]] ||
    fail "generate with $flags ranks: $out"
done
out="$("$WEFT" generate --model tests/data/hf/llama --prompt-ids 1,2 --pp 2 2>&1)"
[[ "$out" == "weft generate: --pp needs --pp-plan (a plan file with a pp_plan, or auto)" ]] ||
  fail "--pp without --pp-plan: $out"
out="$("$WEFTRUN" --standalone --nproc-per-node 2 "$WEFT" generate --model tests/data/hf/llama \
      --prompt-ids 1,2 --pp-plan auto --pp 3 2>&1)"
[[ "$out" == *"weft generate: --pp 3 does not divide WORLD_SIZE 2 (expected tp = WORLD_SIZE / pp ranks per stage)"* ]] ||
  fail "--pp 3 on 2 ranks: $out"

# 11. kill -9 weftrun: the workers and what they started in their process
#     group are gone too (the keeper kills the group when weftrun dies).
marker="weft_tree_check_$$"
"$WEFTRUN" --nproc-per-node 2 bash -c \
  "(exec -a ${marker}_grandchild sleep 300) & exec -a ${marker}_worker sleep 300" \
  >"$tmp/kill9.log" 2>&1 &
pid=$!
for ((k = 0; k < 100 && $(pgrep -f -c "^${marker}_") < 4; k++)); do sleep 0.1; done
[[ $(pgrep -f -c "^${marker}_") -eq 4 ]] || fail "kill -9: the workers and their children did not start"
kill -KILL "$pid"
wait "$pid" 2>/dev/null
for ((k = 0; k < 50 && $(pgrep -f -c "^${marker}_") > 0; k++)); do sleep 0.1; done
if pgrep -f "^${marker}_" >/dev/null; then
  fail "kill -9 weftrun left running: $(pgrep -a -f "^${marker}_")"
  pkill -9 -f "^${marker}_"
fi

# 12. A stuck rank is named, with where the others are, and the job stops.
#  a. Rank 1 exits 0 while rank 0 waits in a collective (its heartbeat goes
#     on, its progress does not).
start=$SECONDS
out="$("$WEFTRUN" --nproc-per-node 2 --stuck-timeout 2 sh -c '
  if [ "$RANK" = 1 ]; then echo "7 3 optimizer step" >"$WEFTRUN_HEARTBEAT_FILE"; exit 0; fi
  i=0; while :; do i=$((i + 1)); echo "$i 3 all-reduce of gradients" >"$WEFTRUN_HEARTBEAT_FILE"; sleep 0.2; done' 2>&1)"
rc=$?
[[ $rc -ne 0 ]] || fail "stuck rank: weftrun exited 0"
((SECONDS - start < 20)) || fail "stuck rank: took $((SECONDS - start))s with --stuck-timeout 2"
expect_contains "stuck rank" "$out" "weftrun: attempt 0: rank 0 (local rank 0, pid"
expect_contains "stuck rank" "$out" ") is stuck in step 3, all-reduce of gradients for 2 s; rank 1 exited with exit code 0 in step 3, optimizer step"
expect_contains "stuck rank" "$out" "weftrun: stopped the job: rank 0 made no progress for 2 s (--stuck-timeout)"
check_error "weftrun: --stuck-timeout=-1 is not a timeout (expected seconds >= 0; 0 turns it off)" --stuck-timeout -1 true
#  b. A real training rank is stopped (SIGSTOP): it is named as not
#     responding, in the step it was in; the other rank waits for it.
source tests/testlib.sh
mkdir -p "$tmp/stuck"
write_tiny_run "$tmp/stuck" "parallel: {tp: 2}"
"$WEFTRUN" --standalone --nproc-per-node 2 --stuck-timeout 3 "$WEFT" train \
  --config "$tmp/stuck/run.yaml" --set train.steps=100000 >"$tmp/stuck.log" 2>&1 &
pid=$!
rank1=""
for ((k = 0; k < 300; k++)); do
  for p in $(pgrep -P "$pid" -f "^$WEFT train"); do
    if tr '\0' '\n' <"/proc/$p/environ" 2>/dev/null | grep -qx RANK=1; then rank1=$p; fi
  done
  [[ -n "$rank1" ]] || { sleep 0.1; continue; }
  beat="$(tr '\0' '\n' <"/proc/$rank1/environ" 2>/dev/null | sed -n 's/^WEFTRUN_HEARTBEAT_FILE=//p')"
  [[ -n "$beat" ]] && (($(cut -d' ' -f2 "$beat" 2>/dev/null || echo 0) >= 3)) && break
  sleep 0.1
done
if [[ -z "$rank1" ]]; then
  fail "SIGSTOP: rank 1 of weft train did not start: $(cat "$tmp/stuck.log")"
  kill -KILL "$pid"
else
  kill -STOP "$rank1"
  for ((k = 0; k < 300 && $(jobs -r | wc -l) > 0; k++)); do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null
  wait "$pid"
  rc=$?
  out="$(cat "$tmp/stuck.log")"
  [[ $rc -eq 1 ]] || fail "SIGSTOP: weftrun exited $rc (expected 1): $out"
  expect_contains "SIGSTOP" "$out" "weftrun: attempt 0: rank 1 (local rank 1, pid $rank1) is not responding: no heartbeat for 3 s (stopped or hung), last in step "
  expect_contains "SIGSTOP" "$out" "; rank 0 waits in step "
fi

if ((failures)); then
  echo "$failures check(s) failed" >&2
  exit 1
fi
echo "all weftrun checks passed"
