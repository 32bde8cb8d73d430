#!/usr/bin/env bash
# Starts a jaxrl_ent job on every worker of a Cloud TPU VM slice.
#
#   launch/tpu_pod.sh --name=my-v5e --zone=us-west4-a \
#       --accelerator=v5litepod-16 --config=configs/tpu_qwen.py \
#       --workdir=gs://my-bucket/runs/qwen05 --create \
#       -- --config.train.steps=500
#
# Steps, each one `gcloud` command (printed, not run, with --dry-run):
#   1. with --create: `gcloud compute tpus tpu-vm create` the slice (--spot
#      for a preemptible one); without it, the slice NAME must exist;
#   2. ship the code to every worker: a tarball of this working tree
#      (`tpu-vm scp --worker=all`), or with --repo=URL a `git clone` there;
#   3. `pip install -e '.[tpu]'` on every worker (skip: --skip-install);
#   4. `tpu-vm ssh --worker=all --command='python3 launch/<job>.py
#      --config=... --workdir=... --config.distributed.initialize=always
#      <flags after -->'`: JAX's multi-host runtime needs the same command
#      on every host at once, which --worker=all does, and every job
#      (train, sft, evaluate, export) joins it (`initialize=always`: JAX
#      finds the coordinator and process ids in the TPU metadata; pass
#      --config.distributed.initialize=... after -- to choose otherwise).
#      The job streams its output here; with --detach it runs under nohup
#      on each worker (log: ~/jaxrl_ent_<job>.log).
#
# The workdir must be one path that every worker sees, since each host
# writes its own checkpoint shards there: a bucket, gs://BUCKET/PATH (the
# VMs' service account needs read/write access to it); checkpoints, metrics,
# TensorBoard events, the warm-start cache and exports all go there, and
# data.train_paths / model_path may be gs:// too. After a preemption, run
# the same command again (without --create if the slice is back): the job
# resumes from the workdir's latest checkpoint.
#
# Needs the Google Cloud SDK, an authenticated account and TPU quota; not
# run by the tests (tests/launch/tpu_pod_test.py checks --dry-run's output).
set -euo pipefail

usage() {
  cat <<'EOF'
usage: launch/tpu_pod.sh --name=TPU_NAME --zone=ZONE --accelerator=TYPE
                         --config=CONFIG_PATH[:VARIANT] --workdir=DIR
                         [--project=PROJECT] [--create] [--spot]
                         [--version=RUNTIME] [--job=train] [--repo=URL]
                         [--ref=BRANCH] [--skip-install] [--detach]
                         [--dry-run] [-- LAUNCHER_FLAGS...]

  --name          TPU VM name (created with --create, else must exist)
  --zone          zone, e.g. us-west4-a
  --accelerator   accelerator type, e.g. v5litepod-16, v4-32 (with --create)
  --config        config file relative to the repository, e.g.
                  configs/tpu_qwen.py or configs/grpo_tiny.py:entropy=clip_cov
  --workdir       run directory every worker sees, e.g. gs://BUCKET/runs/x
  --project       GCP project (default: gcloud's configured one)
  --create        create the TPU VM first
  --spot          with --create: a Spot (preemptible) VM
  --version       TPU software version for --create (default:
                  v2-alpha-tpuv5-lite; v4: tpu-ubuntu2204-base)
  --job           launcher in launch/: train (default), sft, evaluate, export
  --repo, --ref   clone this git repository (and branch/tag) on the
                  workers instead of copying this working tree
  --skip-install  do not pip install on the workers
  --detach        run under nohup on each worker and return
  --dry-run       print the commands instead of running them
  after --         flags passed to the launcher, e.g. --config.train.steps=10
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  echo "run 'launch/tpu_pod.sh --help' for usage." >&2
  exit 2
}

NAME="" ZONE="" ACCELERATOR="" CONFIG="" WORKDIR="" PROJECT=""
VERSION="v2-alpha-tpuv5-lite" JOB="train" REPO="" REF=""
CREATE=0 SPOT=0 SKIP_INSTALL=0 DETACH=0 DRY_RUN=0
EXTRA=()
while (($#)); do
  case "$1" in
    --name=*) NAME="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --accelerator=*) ACCELERATOR="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --project=*) PROJECT="${1#*=}" ;;
    --version=*) VERSION="${1#*=}" ;;
    --job=*) JOB="${1#*=}" ;;
    --repo=*) REPO="${1#*=}" ;;
    --ref=*) REF="${1#*=}" ;;
    --create) CREATE=1 ;;
    --spot) SPOT=1 ;;
    --skip-install) SKIP_INSTALL=1 ;;
    --detach) DETACH=1 ;;
    --dry-run) DRY_RUN=1 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument '$1' (launcher flags go after --)" ;;
  esac
  shift
done

missing=()
[[ -n "$NAME" ]] || missing+=(--name)
[[ -n "$ZONE" ]] || missing+=(--zone)
[[ -n "$CONFIG" ]] || missing+=(--config)
[[ -n "$WORKDIR" ]] || missing+=(--workdir)
((CREATE == 0)) || [[ -n "$ACCELERATOR" ]] || missing+=(--accelerator)
((${#missing[@]} == 0)) || die "missing ${missing[*]}"
case "$JOB" in
  train|sft|evaluate|export) ;;
  *) die "--job=$JOB: expected train, sft, evaluate or export" ;;
esac
((SPOT == 0 || CREATE == 1)) || die "--spot only applies with --create"

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "$REPO" && ! -f "$REPO_ROOT/${CONFIG%%:*}" ]]; then
  die "--config=$CONFIG: no file ${CONFIG%%:*} in $REPO_ROOT"
fi

# One word, single-quoted unless it is plain (readable and paste-able).
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Runs (or, with --dry-run, prints) one command, each word quoted so the
# printed line can be pasted back into a shell.
run() {
  if ((DRY_RUN)); then
    printf '+'
    local word
    for word in "$@"; do
      printf ' '
      quote "$word"
    done
    printf '\n'
  else
    "$@"
  fi
}

GCLOUD=(gcloud compute tpus tpu-vm)
COMMON=(--zone="$ZONE")
[[ -z "$PROJECT" ]] || COMMON+=(--project="$PROJECT")

# Runs a shell command on every worker of the slice at once.
on_all_workers() {
  run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=all --command="$1"
}

# 1. The slice.
if ((CREATE)); then
  create=("${GCLOUD[@]}" create "$NAME" "${COMMON[@]}"
          --accelerator-type="$ACCELERATOR" --version="$VERSION")
  ((SPOT == 0)) || create+=(--spot)
  run "${create[@]}"
fi

# 2. The code, at ~/jaxrl_ent on every worker.
if [[ -n "$REPO" ]]; then
  clone=(git clone --depth=1)
  [[ -z "$REF" ]] || clone+=(--branch "$REF")
  on_all_workers "rm -rf ~/jaxrl_ent && $(printf '%q ' "${clone[@]}" \
      "$REPO")~/jaxrl_ent"
else
  # The working tree as it is (uncommitted edits included), without git
  # metadata and build outputs.
  tarball="${TMPDIR:-/tmp}/jaxrl_ent_${NAME}.tar.gz"
  run tar -czf "$tarball" -C "$REPO_ROOT" --exclude=.git \
      --exclude=__pycache__ --exclude='*.egg-info' .
  run "${GCLOUD[@]}" scp "$tarball" "$NAME:jaxrl_ent.tar.gz" "${COMMON[@]}" \
      --worker=all
  on_all_workers "rm -rf ~/jaxrl_ent && mkdir -p ~/jaxrl_ent && \
tar -xzf ~/jaxrl_ent.tar.gz -C ~/jaxrl_ent"
fi

# 3. Dependencies.
if ((SKIP_INSTALL == 0)); then
  on_all_workers "cd ~/jaxrl_ent && python3 -m pip install -q -e '.[tpu]'"
fi

# 4. The job, on every host at once, joined into one JAX cluster (unless the
# launcher flags choose a distributed.initialize mode themselves).
job=(python3 "launch/$JOB.py" "--config=$CONFIG" "--workdir=$WORKDIR")
case " ${EXTRA[*]-} " in
  *" --config.distributed.initialize="*) ;;
  *) job+=(--config.distributed.initialize=always) ;;
esac
job+=(${EXTRA[@]+"${EXTRA[@]}"})
job_cmd="$(printf '%q ' "${job[@]}")"
job_cmd="${job_cmd% }"
if ((DETACH)); then
  log="~/jaxrl_ent_$JOB.log"
  on_all_workers "cd ~/jaxrl_ent && nohup ${job_cmd} > $log 2>&1 < /dev/null &"
  echo "started on all workers; follow worker 0 with:"
  DRY_RUN=1 run "${GCLOUD[@]}" ssh "$NAME" "${COMMON[@]}" --worker=0 \
      --command="tail -f $log"
else
  on_all_workers "cd ~/jaxrl_ent && ${job_cmd}"
fi
