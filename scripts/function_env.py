"""The environment a function binary runs with on the local stack: this process's environment plus
the KEY=VALUE lines of the stack's env file (localstack/.state/lambda.env, which lambda.sh writes
and `cargo lambda watch` reads). Shared by the scripts that start a bootstrap themselves."""
import os
from pathlib import Path


def env_from(path):
    env = dict(os.environ)
    if path and Path(path).exists():
        for line in Path(path).read_text().splitlines():
            if "=" in line and not line.lstrip().startswith("#"):
                k, v = line.split("=", 1)
                env[k.strip()] = v.strip().strip('"')
    return env
