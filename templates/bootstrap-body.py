#!/usr/bin/env python3
"""Prints the node bootstrap script kept in templates/cluster.yaml (Mappings.Bootstrap),
with a shebang, so that `make lint` can run shellcheck on it: `... | shellcheck -s bash -`."""

import sys

import yaml


class Loader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags read as plain nodes."""


Loader.add_multi_constructor("!", lambda loader, suffix, node: None)

template = yaml.load(open(sys.argv[1] if len(sys.argv) > 1 else "templates/cluster.yaml"), Loader)
print("#!/bin/bash")
print(template["Mappings"]["Bootstrap"]["Script"]["Body"], end="")
