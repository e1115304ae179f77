"""Checks that the install template's IAM policies are policies/*.json, placeholders aside.

deploy/aws/flightdeck.yaml carries four documents of policies/ inline, with the
placeholders that policies/README.md lists replaced by the stack's parameters and pseudo
parameters. This check evaluates each inline document with every such reference set back to
its placeholder (`${UsersBucket}` -> `flightdeck-users`, `!GetAtt StackRole.Arn` -> the
placeholder role ARN, ...) and compares the result with the file, exactly: a statement
added, dropped, reordered or changed on one side only is reported with its path.

Usage (from the repository root, in the venv that holds cfn-lint):
    python deploy/aws/check_policies.py [deploy/aws/flightdeck.yaml]
Exit status 1 when a document differs, 2 when the template cannot be read.
"""

from __future__ import annotations

import json
import pathlib
import re
import sys

from cfnlint.decode import decode

ROOT = pathlib.Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "deploy" / "aws" / "flightdeck.yaml"

# Template reference -> the placeholder value policies/*.json use (policies/README.md).
PLACEHOLDERS = {
    "AWS::Partition": "aws",
    "AWS::AccountId": "123456789012",
    "AWS::Region": "eu-west-2",
    "UsersBucket": "flightdeck-users",
    "CustomizerBucket": "flightdeck-customizer",
    "HomePrefix": "home/",
    "ControllerPrefix": "flightdeck/",
    "StackPrefix": "fd",
    "InstanceName": "production",
    "SesIdentity": "example.org",
    "NotifyFrom": "flightdeck@example.org",
    "VpcId": "vpc-0123456789abcdef0",
    "ControllerRoleName": "flightdeck-controller",
    "StackRole.Arn": "arn:aws:iam::123456789012:role/flightdeck-stack-role",
    "ClusterBoundary": "arn:aws:iam::123456789012:policy/flightdeck-cluster-boundary",
}

# Placeholder values that must never appear literally in the template's documents: the
# template would then pass this check and still hold the example account, bucket or VPC.
LITERALS = ["arn:aws:", "123456789012", "eu-west-2", "flightdeck-users", "flightdeck-customizer",
            "example.org", "vpc-0123456789abcdef0", "flightdeck-stack-role",
            "flightdeck-cluster-boundary", "flightdeck-controller", "production"]

# (policy file, where the document is in the template)
DOCUMENTS = [
    ("policies/controller.json", ("TaskRole", "Properties", "Policies", 0, "PolicyDocument")),
    ("policies/stack-role.json", ("StackRole", "Properties", "Policies", 0, "PolicyDocument")),
    ("policies/stack-role-trust.json", ("StackRole", "Properties", "AssumeRolePolicyDocument")),
    ("policies/cluster-boundary.json", ("ClusterBoundary", "Properties", "PolicyDocument")),
]


class Unresolved(Exception):
    pass


def resolve(value, path="$"):
    """The value with every intrinsic function replaced by the placeholder it stands for."""
    if isinstance(value, dict):
        if len(value) == 1:
            (key, arg), = value.items()
            if key == "Ref":
                return placeholder(str(arg), path)
            if key == "Fn::GetAtt":
                name = ".".join(arg) if isinstance(arg, list) else str(arg)
                return placeholder(name, path)
            if key == "Fn::Sub":
                if not isinstance(arg, str):
                    raise Unresolved(f"{path}: Fn::Sub with a variable map is not supported here")
                return re.sub(r"\$\{([^}!]+)\}", lambda m: placeholder(m.group(1), path), arg)
            if key.startswith("Fn::") or key == "Condition":
                raise Unresolved(f"{path}: {key} is not supported in a checked policy")
        return {k: resolve(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [resolve(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def literals(value, path="$"):
    """Where the unresolved document spells out a placeholder value instead of a reference."""
    if isinstance(value, dict):
        return [f for k, v in value.items() for f in literals(v, f"{path}.{k}")]
    if isinstance(value, list):
        return [f for i, v in enumerate(value) for f in literals(v, f"{path}[{i}]")]
    if isinstance(value, str):
        return [f"{path}: {lit!r} written out; use the parameter" for lit in LITERALS if lit in value]
    return []


def placeholder(name, path):
    if name not in PLACEHOLDERS:
        raise Unresolved(f"{path}: no placeholder for {name!r} (add it to PLACEHOLDERS and policies/README.md)")
    return PLACEHOLDERS[name]


def differences(want, got, path="$"):
    """Human-readable differences between two JSON values."""
    if isinstance(want, dict) and isinstance(got, dict):
        out = []
        for key in sorted(set(want) | set(got)):
            if key not in got:
                out.append(f"{path}.{key}: in the file, not in the template")
            elif key not in want:
                out.append(f"{path}.{key}: in the template, not in the file")
            else:
                out += differences(want[key], got[key], f"{path}.{key}")
        return out
    if isinstance(want, list) and isinstance(got, list):
        out = [d for i, (w, g) in enumerate(zip(want, got)) for d in differences(w, g, f"{path}[{i}]")]
        if len(want) != len(got):
            out.append(f"{path}: {len(want)} entries in the file, {len(got)} in the template")
        return out
    if want != got:
        return [f"{path}: file has {json.dumps(want)}, template has {json.dumps(got)}"]
    return []


def plain(value):
    """cfn-lint's decoded nodes as plain JSON values."""
    return json.loads(json.dumps(value))


def main(argv):
    template_path = pathlib.Path(argv[1]) if len(argv) > 1 else TEMPLATE
    template, matches = decode(str(template_path))
    if matches or template is None:
        for m in matches:
            print(f"ERROR {template_path}: {m}")
        return 2
    resources = plain(template.get("Resources", {}))
    failed = 0
    for file, where in DOCUMENTS:
        want = json.loads((ROOT / file).read_text())
        node, path = resources, "Resources"
        try:
            for step in where:
                node = node[step]
                path += f"[{step}]" if isinstance(step, int) else f".{step}"
            got = resolve(node, path)
        except (KeyError, IndexError, TypeError):
            print(f"FAIL  {file}: no document at {path} of {template_path.name}")
            failed += 1
            continue
        except Unresolved as e:
            print(f"FAIL  {file}: {e}")
            failed += 1
            continue
        diffs = literals(node) + differences(want, got)
        if diffs:
            failed += 1
            print(f"FAIL  {file} differs from {path}:")
            for d in diffs:
                print(f"      {d}")
        else:
            print(f"ok    {file} = {path} ({len(want.get('Statement', []))} statements)")
    print(f"{len(DOCUMENTS) - failed} of {len(DOCUMENTS)} policies match the template")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
