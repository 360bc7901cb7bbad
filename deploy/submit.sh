#!/usr/bin/env bash
# Submit the HumanVerse builder to a running Ray cluster as a Ray job.
#
#   deploy/submit.sh [--dry-run] INPUT OUTPUT [pipelines.build options...]
#
# Everything after INPUT OUTPUT goes to `python -m pipelines.build` unchanged. The repo root is
# uploaded as the job's working_dir (minus the excludes below), so the cluster runs exactly the
# code of this checkout on top of the packages in its image. See deploy/README.md.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: deploy/submit.sh [--dry-run] INPUT OUTPUT [--config FILE.yaml] [--models tiny|paper|DIR] [--set key=value ...]

Submits `python -m pipelines.build INPUT OUTPUT ...` to a Ray cluster with `ray job submit`,
uploading this repository as the job's working dir, and follows the job's logs until it ends
(exit status 0 only if the job SUCCEEDED).

INPUT and OUTPUT are paths as the cluster sees them: s3://..., gs://..., or a shared filesystem.
Re-submitting the same command resumes an interrupted build (committed rows are never redone).

environment:
  RAY_ADDRESS               dashboard address of the cluster (default http://127.0.0.1:8265;
                            e.g. after `ray dashboard deploy/cluster.yaml` or a kubectl port-forward)
  RAY_AUTH_MODE, RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH
                            token authentication, read by the `ray` client itself
  HUMANVERSE_TINY_ZOO       passed through to the job when set (where --models tiny finds the tiny zoo)
  HUMANVERSE_SUBMIT_ENV     other variable names to pass through when set (space-separated), e.g.
                            "HF_HUB_OFFLINE TRANSFORMERS_OFFLINE" for a cluster whose model cache is
                            filled and that has no network. Nothing else of this shell reaches the
                            job: a hub-offline switch set here would stop workers with an empty
                            cache from downloading the models.
  HUMANVERSE_SUBMIT_ARGS    extra `ray job submit` options (space-separated), e.g.
                            "--no-wait --submission-id humanverse-laion-00"
  HUMANVERSE_SUBMIT_DRY_RUN=1
                            print the command (one argument per line) instead of running it
                            (also: --dry-run as the first argument)
EOF
    exit "${1:-2}"
}

if [[ $# -ge 1 && ( "$1" == "-h" || "$1" == "--help" ) ]]; then
    usage 0
fi
dry_run="${HUMANVERSE_SUBMIT_DRY_RUN:-0}"
if [[ $# -ge 1 && "$1" == "--dry-run" ]]; then
    dry_run=1
    shift
fi
if [[ $# -lt 2 ]]; then
    usage 2
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo_root"  # --working-dir . below is the repo root, wherever this script is called from

address="${RAY_ADDRESS:-http://127.0.0.1:8265}"

# Kept in sync with deploy/runtime_env.yaml (the test compares them). The working dir upload is
# refused from 512 MiB; .venv alone is ~7 GB and out/ holds local datasets.
excludes=(.git .venv venv out .tiny-zoo "**/__pycache__" "*.egg-info" .pytest_cache .ruff_cache build dist)

# Variables passed to the job driver and its workers when set here: only what the job needs, and
# what HUMANVERSE_SUBMIT_ENV asks for. Not this shell's HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE (set for
# local work, they would stop workers with an empty cache from downloading). Secrets (HF_TOKEN,
# cloud credentials) never: runtime_env is readable by anyone who can list jobs; give them to the
# cluster's image or pod spec instead.
passthrough=(HUMANVERSE_TINY_ZOO)
read -r -a extra_env <<<"${HUMANVERSE_SUBMIT_ENV:-}"
passthrough+=("${extra_env[@]}")

json_str() {  # a JSON string literal of $1 (escapes backslash, quote and control characters)
    local s="$1"
    s="${s//\\/\\\\}"
    s="${s//\"/\\\"}"
    s="${s//$'\n'/\\n}"
    s="${s//$'\t'/\\t}"
    s="${s//$'\r'/\\r}"
    printf '"%s"' "$s"
}

ex_json=""
for e in "${excludes[@]}"; do
    ex_json+="${ex_json:+, }$(json_str "$e")"
done
env_json="$(json_str PYTHONUNBUFFERED): $(json_str 1), $(json_str TOKENIZERS_PARALLELISM): $(json_str false)"
for name in "${passthrough[@]}"; do
    [[ -n "$name" ]] || continue
    if [[ ! "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]]; then
        echo "submit.sh: HUMANVERSE_SUBMIT_ENV holds '$name', which is not a variable name." >&2
        exit 2
    fi
    if [[ -n "${!name+set}" ]]; then
        env_json+=", $(json_str "$name"): $(json_str "${!name}")"
    fi
done
runtime_env="{\"excludes\": [${ex_json}], \"env_vars\": {${env_json}}}"

read -r -a submit_args <<<"${HUMANVERSE_SUBMIT_ARGS:-}"

cmd=(ray job submit
     --address "$address"
     --working-dir .
     --runtime-env-json "$runtime_env"
     "${submit_args[@]}"
     -- python -m pipelines.build "$@")

if [[ "$dry_run" == "1" ]]; then
    printf '%s\n' "${cmd[@]}"
    exit 0
fi
exec "${cmd[@]}"
