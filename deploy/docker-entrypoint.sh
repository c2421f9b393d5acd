#!/bin/sh
# Entrypoint of the conveyor image: one image, every role.
#
#   IMAGE api|worker|batch-worker|serve|db|projects|keys|usage|requests|chat|bench ...  -> conveyor ...
#   IMAGE --log-level DEBUG api ...                                     -> conveyor ...
#   IMAGE --port 9000 ...      (serve's flags first)                    -> conveyor serve ...
#   IMAGE healthcheck                                                   -> conveyor-healthcheck
#   IMAGE anything-else ...    (a shell, python)                        -> run it as is
#
# Secrets may come as files (Docker/Kubernetes secrets): CONVEYOR_X_FILE=/run/secrets/x
# sets CONVEYOR_X to the file's content, so a key never has to sit in the environment spec.
# `exec` keeps conveyor as the container's main process, so SIGTERM reaches it and drains.
set -eu

die() {
    echo "conveyor-entrypoint: $*" >&2
    exit 64
}

# Settings whose own name ends in _FILE: a path conveyor reads itself, not a secret file.
SETTINGS_NAMED_FILE="CONVEYOR_LOG_CONFIG_FILE"

load_secret_files() {
    for name in $(env | sed -n 's/^\(CONVEYOR_[A-Z0-9_]*\)_FILE=.*/\1/p'); do
        case " $SETTINGS_NAMED_FILE " in
            *" ${name}_FILE "*) continue ;;
        esac
        file=$(printenv "${name}_FILE")
        if [ -n "$(printenv "$name" || true)" ]; then
            die "both $name and ${name}_FILE are set; use one"
        fi
        [ -f "$file" ] && [ -r "$file" ] || die "${name}_FILE: cannot read $file"
        # $(cat) drops trailing newlines, which editors add to secret files.
        value=$(cat "$file")
        export "$name=$value"
        unset "${name}_FILE"
    done
}

load_secret_files
[ "$#" -gt 0 ] || set -- serve

case "$1" in
    api | worker | batch-worker | serve | db | projects | keys | usage | requests | chat | bench | --log-level* | --log-config-file*)
        exec conveyor "$@"
        ;;
    -*)
        # vLLM's image takes server flags directly (`docker run vllm/vllm-openai --model M`).
        exec conveyor serve "$@"
        ;;
    healthcheck)
        shift
        exec conveyor-healthcheck "$@"
        ;;
    *)
        exec "$@"
        ;;
esac
