#!/usr/bin/env python3
"""Read one value from the recipe YAML for run.sh: ``conf.py conf/default.yaml tts.num_jobs``.

Lists are printed space-separated and mappings as ``k=v`` pairs, so shell code can loop over them.
A missing key is a one-line error naming the file and key (no silent empty strings).
"""
import sys

import yaml


def main() -> int:
    if len(sys.argv) not in (3, 4):
        print("usage: conf.py CONFIG.yaml dotted.key [default]", file=sys.stderr)
        return 2
    path, key = sys.argv[1], sys.argv[2]
    try:
        with open(path, encoding="utf-8") as f:
            node = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError) as e:
        print(f"{path}: cannot read recipe config: {e}", file=sys.stderr)
        return 1
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            if len(sys.argv) == 4:
                print(sys.argv[3])
                return 0
            print(f"{path}: missing key {key}", file=sys.stderr)
            return 1
        node = node[part]
    if isinstance(node, list):
        print(" ".join(str(v) for v in node))
    elif isinstance(node, dict):
        print(" ".join(f"{k}={v}" for k, v in node.items()))
    elif isinstance(node, bool):
        print("true" if node else "false")
    else:
        print(node)
    return 0


if __name__ == "__main__":
    sys.exit(main())
